//! OCSF 1.3.0 "DNS Activity" (class_uid 4003, category 4 Network Activity). The field mapping is
//! documented in docs/ocsf.md; exfilguard-specific facts (verdict, score, reasons, kernel
//! reasons, cgroup) go under `unmapped.exfilguard`, as OCSF prescribes for vendor data.

use crate::{Decision, Detection};
use exfilguard_detect::Class;
use serde_json::{json, Value};

pub const OCSF_VERSION: &str = "1.3.0";
pub const CLASS_UID: u32 = 4003;

fn qtype_name(t: u16) -> String {
    hickory_proto::rr::RecordType::from(t).to_string()
}

/// (disposition_id, disposition, action_id, action)
fn disposition(d: Decision) -> (u32, &'static str, u32, &'static str) {
    match d {
        Decision::Released => (1, "Allowed", 1, "Allowed"),
        Decision::Blocked => (2, "Blocked", 2, "Denied"),
        Decision::Quarantined => (3, "Quarantined", 2, "Denied"),
        Decision::Dropped => (6, "Dropped", 2, "Denied"),
        Decision::Reported => (15, "Detected", 3, "Observed"),
        Decision::Stripped => (11, "Corrected", 4, "Modified"),
    }
}

/// Informational for benign, High for a conviction, Medium for a kernel-only decision
/// (blocklist hit, quarantine) the model did not re-judge.
fn severity(det: &Detection) -> (u32, &'static str) {
    match &det.verdict {
        Some(v) if v.class.is_malicious() => (4, "High"),
        Some(v) if v.class == Class::Benign => (1, "Informational"),
        _ if matches!(det.decision, Decision::Blocked | Decision::Quarantined) => (3, "Medium"),
        _ => (1, "Informational"),
    }
}

pub fn dns_activity(det: &Detection) -> Value {
    let k = &det.kernel;
    let response = k.response;
    let (activity_id, activity) = if response {
        (2, "Response")
    } else {
        (1, "Query")
    };
    let (disp_id, disp, action_id, action) = disposition(det.decision);
    let (sev_id, sev) = severity(det);
    let mut ev = json!({
        "class_uid": CLASS_UID,
        "class_name": "DNS Activity",
        "category_uid": 4,
        "category_name": "Network Activity",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": format!("DNS Activity: {activity}"),
        "time": det.time_ms,
        "severity_id": sev_id,
        "severity": sev,
        "action_id": action_id,
        "action": action,
        "disposition_id": disp_id,
        "disposition": disp,
        "status_id": 1,
        "status": "Success",
        "query": {
            "hostname": det.name,
            "type": qtype_name(k.qtype),
            "class": "IN",
            "packet_uid": k.dns_id,
        },
        "src_endpoint": { "ip": k.src.to_string(), "port": k.sport },
        "dst_endpoint": { "ip": k.dst.to_string(), "port": k.dport },
        "connection_info": {
            "protocol_name": k.transport,
            "protocol_ver_id": if k.src.is_ipv6() { 6 } else { 4 },
            "direction_id": if response { 1 } else { 2 },
            "direction": if response { "Inbound" } else { "Outbound" },
        },
        "device": { "hostname": det.host, "type_id": 0, "type": "Unknown" },
        "metadata": {
            "version": OCSF_VERSION,
            "uid": det.uid.to_string(),
            "log_name": "exfilguard",
            "product": {
                "name": "exfilguard",
                "vendor_name": "exfilguard",
                "version": env!("CARGO_PKG_VERSION"),
            },
        },
        "observables": [
            { "name": "query.hostname", "type_id": 1, "type": "Hostname", "value": det.name },
        ],
        "unmapped": { "exfilguard": {
            "decision": det.decision.as_str(),
            "registered_domain": det.registered_domain,
            "verdict": det.verdict,
            "kernel_action": k.action,
            "kernel_reasons": k.reasons,
            "hook": k.hook,
            "iface": det.iface,
            "ifindex": k.ifindex,
            "encap": k.encap,
            "hold_us": det.hold_us,
            "socket_cookie": k.socket_cookie,
        }},
    });
    if let Some(d) = &det.registered_domain {
        ev["observables"].as_array_mut().expect("array").push(json!(
            { "name": "exfilguard.registered_domain", "type_id": 1, "type": "Hostname", "value": d }
        ));
    }
    if let Some(n) = det.count {
        ev["count"] = json!(n);
    }
    if response {
        ev["rcode_id"] = json!(k.rcode);
        ev["rcode"] = json!(rcode_name(k.rcode));
    }
    if let Some(p) = &k.process {
        ev["actor"] = json!({ "process": {
            "pid": p.tgid,
            "tid": p.pid,
            "name": p.comm,
            "user": { "uid": p.uid.to_string() },
        }});
        let x = &mut ev["unmapped"]["exfilguard"];
        x["cgroup_id"] = json!(p.cgroup_id);
        x["thread"] = json!(p.thread);
        x["container"] = json!(det.container);
    }
    ev
}

/// OCSF DNS rcode captions (rcode_id is the DNS RCODE).
fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NoError",
        1 => "FormError",
        2 => "ServError",
        3 => "NXDomain",
        4 => "NotImp",
        5 => "Refused",
        _ => "Other",
    }
}
