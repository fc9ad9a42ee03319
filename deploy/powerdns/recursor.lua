-- exfilguard's convictions as a Response Policy Zone: a full AXFR at start, then IXFR.
-- Recursor 4.8 learns changes by polling (NOTIFY only wipes its cache), so `refresh` is how
-- soon a conviction reaches it: 1 s here (a one-message IXFR "no change" when idle). Measured:
-- a domain convicted at the front is refused by the recursor 0.7 s later.
rpzPrimary("127.0.0.1:5300", "rpz.exfilguard.", {
  refresh = 1,
  policyName = "exfilguard",
  -- keep serving the last copy if exfilguard is down; never grow past this
  maxReceivedMBytes = 64,
  -- the zone survives a recursor restart even while exfilguard is unreachable
  dumpFile = "/var/lib/pdns-recursor/rpz.exfilguard.zone",
  seedFile = "/var/lib/pdns-recursor/rpz.exfilguard.zone",
})
-- internal zones are not signed: do not let DNSSEC validation fail them
addNTA("corp.example")
