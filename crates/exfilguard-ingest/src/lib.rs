//! What operators have and feed in: one reader that turns a capture or a query log into a
//! stream of DNS [`Record`]s for `exfilguard scan` and `exfilguard replay`.
//!
//! The kind is recognised from the content, not the file name: first the compression (gzip,
//! zstd) by magic bytes, then pcap/pcapng and dnstap (Frame Streams) by magic bytes, then text
//! line by line — exfilguard's OCSF events, Zeek `dns.log` (TSV with its `#fields` header, or
//! JSON), dnsmasq/Pi-hole (`log-queries`), BIND query logs, Unbound `log-queries`/`log-replies`,
//! and `SECONDS CLIENT NAME [RCODE]`. Lines nothing reads are counted and the first is kept, so
//! the error can show it next to the list of formats ([`FORMATS`]).

use anyhow::{Context, Result};
use exfilguard_dns::DnsName;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

mod capture;
mod dnstap;
mod text;

/// What `scan` and `replay` read, for help texts and errors.
pub const FORMATS: &str = "pcap, pcapng, dnstap (Frame Streams), Zeek dns.log (TSV or JSON), \
dnsmasq/Pi-hole log-queries, BIND query log, Unbound log-queries/log-replies, exfilguard OCSF \
events (JSON lines), and `SECONDS CLIENT NAME [RCODE]` lines; each plain, gzip or zstd";

/// One DNS observation: a query, or a response (`rcode` is `Some`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Milliseconds on the source's clock (epoch for captures, dnstap, Zeek, BIND and Unbound;
    /// syslog stamps carry no year, so dnsmasq logs count from the year 2000).
    pub ts_ms: u64,
    /// The client that asked (for a response: the client it went to).
    pub client: IpAddr,
    /// The client's source port, when the source says.
    pub client_port: Option<u16>,
    /// The server asked, when the source says.
    pub server: Option<SocketAddr>,
    pub name: DnsName,
    pub qtype: Option<u16>,
    /// `Some`: a response with this RCODE; `None`: a query.
    pub rcode: Option<u8>,
    /// "udp", "tcp", "tls", "https"… when the source says.
    pub transport: Option<&'static str>,
    /// Tunnels and tags crossed in a capture, outermost first.
    pub encapsulation: Vec<&'static str>,
    /// Where it came from: the frame number in a capture, the line in a log, the message in dnstap.
    pub at: u64,
    pub format: &'static str,
}

impl Record {
    /// "A", "TXT", "TYPE65534": the type's mnemonic.
    pub fn qtype_name(&self) -> Option<String> {
        self.qtype.map(qtype_name)
    }
}

pub fn qtype_name(t: u16) -> String {
    hickory_proto::rr::RecordType::from(t).to_string()
}

/// What reading found besides the records.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub records: u64,
    /// Records per format read ("pcap", "zeek-tsv", "dnsmasq", …).
    pub formats: BTreeMap<&'static str, u64>,
    /// Capture frames, or dnstap messages.
    pub frames: u64,
    /// Frames or dnstap messages that carry no client DNS (other traffic, resolver-side dnstap).
    pub not_dns: u64,
    /// DNS that does not parse (a broken message, a truncated capture).
    pub errors: u64,
    /// Text lines that are no record of any format (comments and blank lines are not counted).
    pub unparsable: u64,
    /// The first unparsable line: its number and (cut) text.
    pub first_unparsable: Option<(u64, String)>,
    /// Set when reading stopped early (a truncated capture): what stopped it.
    pub stopped: Option<String>,
    /// The first problems, each with where it is ("frame 7: …"); at most [`MAX_PROBLEMS`].
    pub problems: Vec<String>,
}

pub const MAX_PROBLEMS: usize = 50;

/// "dnsmasq 6, pcap 12": records per format, for reports.
pub fn read_as(formats: &BTreeMap<&'static str, u64>) -> String {
    formats
        .iter()
        .map(|(f, n)| format!("{f} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Stats {
    /// Counts an error, keeping the first few messages.
    pub(crate) fn error(&mut self, what: String) {
        self.errors += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(what);
        }
    }

    fn count(&mut self, r: &Record) {
        self.records += 1;
        *self.formats.entry(r.format).or_default() += 1;
    }

    /// The error to give when nothing was read: what was seen, and what is understood.
    pub fn nothing_read(&self, what: &str) -> anyhow::Error {
        let first = self
            .first_unparsable
            .as_ref()
            .map(|(n, l)| format!("; line {n} reads {l:?}"))
            .unwrap_or_default();
        anyhow::anyhow!(
            "{what}: no DNS records found ({} unparsable lines, {} frames without DNS, {} errors{first}). \
             Formats read: {FORMATS}",
            self.unparsable,
            self.not_dns,
            self.errors
        )
    }
}

/// `path`, or stdin for `-`, with gzip (one or several members) or zstd undone.
pub fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let raw: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?)
    };
    decompress(std::io::BufReader::new(raw)).with_context(|| format!("reading {}", path.display()))
}

/// Undoes gzip or zstd when the first bytes say so.
pub fn decompress(mut r: impl BufRead + 'static) -> Result<Box<dyn BufRead>> {
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(std::io::BufReader::new(
            flate2::bufread::MultiGzDecoder::new(r),
        ))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(std::io::BufReader::new(zstd::Decoder::with_buffer(r)?))
    } else {
        Box::new(r)
    })
}

/// Reads `path` (see [`open`]) and hands every record to `sink`, in file order.
pub fn read(path: &Path, sink: impl FnMut(Record)) -> Result<Stats> {
    let r = open(path)?;
    read_from(r, sink).with_context(|| format!("reading {}", path.display()))
}

/// Reads an already opened (decompressed) stream.
pub fn read_from(r: Box<dyn BufRead>, mut sink: impl FnMut(Record)) -> Result<Stats> {
    let mut stats = Stats::default();
    // the first bytes decide the kind; a pipe or a decompressor may hand out fewer than the
    // 12 dnstap needs in one read, so read them fully and put them back
    let mut head = Vec::with_capacity(16);
    let mut r = r;
    (&mut r).take(16).read_to_end(&mut head)?;
    let r: Box<dyn BufRead> = Box::new(std::io::BufReader::new(
        std::io::Cursor::new(head.clone()).chain(r),
    ));
    let mut counted = |stats: &mut Stats, rec: Record| {
        stats.count(&rec);
        sink(rec)
    };
    if capture::is_capture(&head) {
        capture::read(r, &mut stats, &mut counted)?;
    } else if dnstap::is_dnstap(&head) {
        dnstap::read(r, &mut stats, &mut counted)?;
    } else {
        text::read(r, &mut stats, &mut counted)?;
    }
    Ok(stats)
}

/// Reads bytes already in memory (the fuzz target), decompressing as [`open`] does.
pub fn read_bytes(data: &[u8], sink: impl FnMut(Record)) -> Result<Stats> {
    let r = decompress(std::io::Cursor::new(data.to_vec()))?;
    read_from(r, sink)
}
