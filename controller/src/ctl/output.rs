//! novactl's output: aligned tables for people, JSON for scripts. JSON field names follow the
//! protobuf field names; enums are printed as short lower-case words.

use novacron_proto::agent as apb;
use novacron_proto::controller as pb;
use serde_json::{json, Value};

use super::Format;

/// A short name for a VM phase.
pub fn phase_name(p: i32) -> &'static str {
    match pb::VmPhase::try_from(p).unwrap_or(pb::VmPhase::Unspecified) {
        pb::VmPhase::Unspecified => "unknown",
        pb::VmPhase::Pending => "pending",
        pb::VmPhase::Scheduled => "scheduled",
        pb::VmPhase::Running => "running",
        pb::VmPhase::Stopped => "stopped",
        pb::VmPhase::Migrating => "migrating",
        pb::VmPhase::Failed => "failed",
        pb::VmPhase::Unknown => "unknown",
        pb::VmPhase::Deleting => "deleting",
    }
}

fn desired_name(d: i32) -> &'static str {
    match pb::DesiredState::try_from(d).unwrap_or(pb::DesiredState::Unspecified) {
        pb::DesiredState::Running => "running",
        pb::DesiredState::Stopped => "stopped",
        pb::DesiredState::Unspecified => "",
    }
}

fn restart_name(r: i32) -> &'static str {
    match pb::RestartPolicy::try_from(r).unwrap_or(pb::RestartPolicy::Unspecified) {
        pb::RestartPolicy::OnFailure => "on-failure",
        pb::RestartPolicy::Never => "never",
        _ => "always",
    }
}

fn host_state_name(s: i32) -> &'static str {
    match pb::HostState::try_from(s).unwrap_or(pb::HostState::Unspecified) {
        pb::HostState::Ready => "Ready",
        pb::HostState::NotReady => "NotReady",
        pb::HostState::Unspecified => "Unknown",
    }
}

/// JSON of an agent status.
pub fn status_json(s: &apb::VmStatus) -> Value {
    let m = s.metrics.unwrap_or_default();
    json!({
        "state": crate::agent_client::state_name(s.state),
        "pid": s.pid,
        "started_at_ms": s.started_at_ms,
        "uptime_ms": s.uptime_ms,
        "exit_code": s.exit_code,
        "exit_signal": s.exit_signal,
        "vmm_state": s.vmm_state,
        "reboots": s.reboots,
        "adopted": s.adopted,
        "console_log": s.console_log,
        "message": s.message,
        "metrics": {
            "cpu_time_ms": m.cpu_time_ms,
            "rss_bytes": m.rss_bytes,
            "dirty_pages_per_sec": m.dirty_pages_per_sec,
            "cgroup_memory_bytes": m.cgroup_memory_bytes,
            "cgroup_memory_limit_bytes": m.cgroup_memory_limit_bytes,
            "cgroup_cpu_usage_ms": m.cgroup_cpu_usage_ms,
            "cgroup_cpu_quota_millicpus": m.cgroup_cpu_quota_millicpus,
            "cgroup_pids": m.cgroup_pids,
            "cgroup_oom_kills": m.cgroup_oom_kills,
        },
    })
}

fn encoding_name(e: i32) -> &'static str {
    match apb::PageEncoding::try_from(e).unwrap_or(apb::PageEncoding::Raw) {
        apb::PageEncoding::Raw => "raw",
        apb::PageEncoding::Zstd => "zstd",
        apb::PageEncoding::Delta => "delta",
    }
}

fn encoding_stats_json(m: Option<&apb::EncodingStats>) -> Value {
    let m = m.copied().unwrap_or_default();
    json!({
        "batches": m.batches, "pages": m.pages, "raw_bytes": m.raw_bytes,
        "encoded_bytes": m.encoded_bytes, "cpu_ns": m.cpu_ns,
    })
}

/// JSON of a VMM migration summary, in the VMM's own layout (`vmm/API.md`).
pub fn summary_json(s: &apb::MigrationSummary) -> Value {
    let c = s.codec.unwrap_or_default();
    let k = c.kinds.unwrap_or_default();
    json!({
        "ok": s.ok,
        "total_ms": s.total_ms,
        "downtime_ms": s.downtime_ms,
        "dest_downtime_ms": s.dest_downtime_ms,
        "rounds": s.rounds,
        "round_details": s.round_details.iter().map(|r| json!({
            "round": r.round,
            "encoding": encoding_name(r.encoding),
            "pages_by_encoding": r.pages_by_encoding,
            "pages": r.pages,
            "zero_pages": r.zero_pages,
            "bytes": r.bytes,
            "ms": r.ms,
            "dirty_pages": r.dirty_pages,
            "dirty_rate": r.dirty_rate,
            "throttle_pct": r.throttle_pct,
        })).collect::<Vec<_>>(),
        "zero_pages": s.zero_pages,
        "wire_bytes": s.wire_bytes,
        "memory_bytes": s.memory_bytes,
        "throttle_pct": s.throttle_pct,
        "verified": s.verified,
        "codec": {
            "raw": encoding_stats_json(c.raw.as_ref()),
            "zstd": encoding_stats_json(c.zstd.as_ref()),
            "delta": encoding_stats_json(c.delta.as_ref()),
            "kinds": {"zero": k.zero, "raw": k.raw, "delta": k.delta, "dedup": k.dedup},
            "cache_hits": c.cache_hits,
            "cache_misses": c.cache_misses,
            "cache_evictions": c.cache_evictions,
            "cpu_ns": c.cpu_ns,
            "wall_ns": c.wall_ns,
        },
        "bytes_saved": s.bytes_saved,
        "cache_hit_rate": s.cache_hit_rate,
        "encoder_cpu_ms": s.encoder_cpu_ms,
    })
}

/// JSON of a VM.
pub fn vm_json(vm: &pb::Vm) -> Value {
    let spec = vm.spec.clone().unwrap_or_default();
    let pl = spec.placement.clone().unwrap_or_default();
    json!({
        "id": vm.id,
        "name": vm.name,
        "host": vm.host,
        "phase": phase_name(vm.phase),
        "desired": desired_name(vm.desired),
        "message": vm.message,
        "created_at_ms": vm.created_at_ms,
        "updated_at_ms": vm.updated_at_ms,
        "restart_count": vm.restart_count,
        "generation": vm.generation,
        "spec": {
            "vcpus": spec.vcpus,
            "memory_mib": spec.memory_mib,
            "kernel": spec.kernel,
            "initrd": spec.initrd,
            "image": spec.image,
            "cmdline": spec.cmdline,
            "disks": spec.disks.iter().map(|d| json!({"image": d.image, "size_mib": d.size_mib, "readonly": d.readonly, "clone": d.clone, "shared": d.shared})).collect::<Vec<_>>(),
            "networks": spec.networks.iter().map(|n| json!({"bridge": n.bridge, "mac": n.mac})).collect::<Vec<_>>(),
            "labels": spec.labels,
            "placement": {"host_labels": pl.host_labels, "anti_affinity_group": pl.anti_affinity_group, "host": pl.host},
            "restart_policy": restart_name(spec.restart_policy),
        },
        "status": vm.status.as_ref().map(status_json),
        "migration": vm.migration.as_ref().map(|m| json!({
            "id": m.id, "source_host": m.source_host, "target_host": m.target_host,
            "phase": crate::agent_client::migration_phase_name(m.phase),
            "started_at_ms": m.started_at_ms, "ended_at_ms": m.ended_at_ms,
            "summary": m.summary.as_ref().map(summary_json),
            "error": m.error,
        })),
    })
}

/// JSON of a host.
pub fn host_json(h: &pb::Host) -> Value {
    let cap = h.capacity.unwrap_or_default();
    let alloc = h.allocated.unwrap_or_default();
    json!({
        "name": h.name,
        "address": h.address,
        "agent_id": h.agent_id,
        "state": host_state_name(h.state),
        "cordoned": h.cordoned,
        "draining": h.draining,
        "cpus": h.cpus,
        "memory_mib": h.memory_mib,
        "capacity": {"vcpus": cap.vcpus, "memory_mib": cap.memory_mib},
        "allocated": {"vcpus": alloc.vcpus, "memory_mib": alloc.memory_mib},
        "labels": h.labels,
        "last_heartbeat_ms": h.last_heartbeat_ms,
        "vm_count": h.vm_count,
        "version": h.version,
    })
}

/// JSON of an event.
pub fn event_json(e: &pb::Event) -> Value {
    json!({"seq": e.seq, "time_ms": e.time_ms, "kind": e.kind, "vm": e.vm, "vm_id": e.vm_id, "host": e.host, "message": e.message})
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Renders rows as aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{:<width$}  ", c, width = w[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn fmt_uptime(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn vm_row(vm: &pb::Vm) -> Vec<String> {
    let spec = vm.spec.clone().unwrap_or_default();
    let st = vm.status.clone().unwrap_or_default();
    let m = st.metrics.unwrap_or_default();
    vec![
        vm.name.clone(),
        phase_name(vm.phase).to_string(),
        if vm.host.is_empty() {
            "-".into()
        } else {
            vm.host.clone()
        },
        spec.vcpus.to_string(),
        format!("{}M", spec.memory_mib),
        if st.pid > 0 {
            st.pid.to_string()
        } else {
            "-".into()
        },
        if st.pid > 0 {
            fmt_uptime(st.uptime_ms)
        } else {
            "-".into()
        },
        format!("{}M", m.rss_bytes / (1 << 20)),
        vm.restart_count.to_string(),
        vm.id.chars().take(8).collect(),
    ]
}

const VM_HEADER: [&str; 10] = [
    "NAME", "PHASE", "HOST", "VCPUS", "MEMORY", "PID", "UPTIME", "RSS", "RESTARTS", "ID",
];

/// The table view's line on a running VM's cgroup (none when it has none).
fn cgroup_line(m: &apb::VmMetrics) -> Option<String> {
    let limited = m.cgroup_memory_limit_bytes > 0 || m.cgroup_cpu_quota_millicpus > 0;
    if !limited && m.cgroup_memory_bytes == 0 && m.cgroup_cpu_usage_ms == 0 {
        return None;
    }
    let or_none = |v: u64, s: String| if v == 0 { "none".to_string() } else { s };
    Some(format!(
        "cgroup: memory {}M of {}, cpu {} ms (quota {}), {} tasks, {} oom kills",
        m.cgroup_memory_bytes >> 20,
        or_none(
            m.cgroup_memory_limit_bytes,
            format!("{}M", m.cgroup_memory_limit_bytes >> 20)
        ),
        m.cgroup_cpu_usage_ms,
        or_none(
            m.cgroup_cpu_quota_millicpus,
            format!("{:.2} CPU", m.cgroup_cpu_quota_millicpus as f64 / 1000.0)
        ),
        m.cgroup_pids,
        m.cgroup_oom_kills
    ))
}

/// Prints one VM.
pub fn print_vm(vm: &pb::Vm, f: Format) {
    match f {
        Format::Json => print_json(&vm_json(vm)),
        Format::Table => {
            println!("{}", table(&VM_HEADER, &[vm_row(vm)]));
            let m = vm
                .status
                .as_ref()
                .and_then(|s| s.metrics)
                .unwrap_or_default();
            if let Some(l) = cgroup_line(&m) {
                println!("{l}");
            }
            if !vm.message.is_empty() {
                println!("message: {}", vm.message);
            }
            if let Some(m) = &vm.migration {
                println!(
                    "last migration: {} -> {} ({}) {}",
                    m.source_host,
                    m.target_host,
                    crate::agent_client::migration_phase_name(m.phase),
                    m.error
                );
            }
        }
    }
}

/// Prints a VM list.
pub fn print_vms(vms: &[pb::Vm], next: &str, f: Format) {
    match f {
        Format::Json => print_json(
            &json!({"vms": vms.iter().map(vm_json).collect::<Vec<_>>(), "next_page_token": next}),
        ),
        Format::Table => {
            let rows: Vec<Vec<String>> = vms.iter().map(vm_row).collect();
            println!("{}", table(&VM_HEADER, &rows));
            if !next.is_empty() {
                println!("(more: --page-token {next})");
            }
        }
    }
}

fn host_row(h: &pb::Host) -> Vec<String> {
    let cap = h.capacity.unwrap_or_default();
    let a = h.allocated.unwrap_or_default();
    let mut state = host_state_name(h.state).to_string();
    if h.cordoned {
        state.push_str(",SchedulingDisabled");
    }
    if h.draining {
        state.push_str(",Draining");
    }
    let labels: Vec<String> = {
        let mut l: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        l.sort();
        l
    };
    vec![
        h.name.clone(),
        state,
        h.address.clone(),
        h.vm_count.to_string(),
        format!("{}/{}", a.vcpus, cap.vcpus),
        format!("{}M/{}M", a.memory_mib, cap.memory_mib),
        if labels.is_empty() {
            "-".into()
        } else {
            labels.join(",")
        },
    ]
}

const HOST_HEADER: [&str; 7] = [
    "NAME", "STATE", "ADDRESS", "VMS", "VCPUS", "MEMORY", "LABELS",
];

/// Prints one host.
pub fn print_host(h: &pb::Host, f: Format) {
    match f {
        Format::Json => print_json(&host_json(h)),
        Format::Table => println!("{}", table(&HOST_HEADER, &[host_row(h)])),
    }
}

/// Prints a host list.
pub fn print_hosts(hosts: &[pb::Host], next: &str, f: Format) {
    match f {
        Format::Json => print_json(
            &json!({"hosts": hosts.iter().map(host_json).collect::<Vec<_>>(), "next_page_token": next}),
        ),
        Format::Table => {
            let rows: Vec<Vec<String>> = hosts.iter().map(host_row).collect();
            println!("{}", table(&HOST_HEADER, &rows));
        }
    }
}

/// Prints a delete result.
pub fn print_deleted(r: &pb::DeleteVmResponse, f: Format) {
    match f {
        Format::Json => print_json(&json!({"deleted": {"id": r.id, "name": r.name}})),
        Format::Table => println!("vm {} deleted", r.name),
    }
}

/// Prints a migration result.
pub fn print_migration(r: &pb::MigrateVmResponse, f: Format) {
    match f {
        Format::Json => print_json(&json!({
            "vm": r.vm.as_ref().map(vm_json),
            "source_host": r.source_host,
            "target_host": r.target_host,
            "elapsed_ms": r.elapsed_ms,
            "summary": r.summary.as_ref().map(summary_json),
        })),
        Format::Table => {
            let name = r.vm.as_ref().map(|v| v.name.as_str()).unwrap_or("?");
            println!(
                "vm {name} migrated {} -> {} in {} ms",
                r.source_host, r.target_host, r.elapsed_ms
            );
            if let Some(s) = &r.summary {
                println!("vmm: {}", crate::util::short_summary(s));
            }
        }
    }
}

/// Prints a drain result.
pub fn print_drain(r: &pb::DrainHostResponse, f: Format) {
    match f {
        Format::Json => print_json(&json!({
            "host": r.host.as_ref().map(host_json),
            "moved": r.moved,
            "failed": r.failed,
        })),
        Format::Table => {
            let name = r.host.as_ref().map(|h| h.name.as_str()).unwrap_or("?");
            println!(
                "host {name} drained: {} moved, {} failed",
                r.moved.len(),
                r.failed.len()
            );
            for m in &r.moved {
                println!("  moved  {m}");
            }
            for m in &r.failed {
                println!("  FAILED {m}");
            }
        }
    }
}

const EVENT_HEADER: [&str; 5] = ["SEQ", "TIME", "KIND", "OBJECT", "MESSAGE"];

fn event_row(e: &pb::Event) -> Vec<String> {
    let secs = e.time_ms / 1000;
    let t = format!(
        "{:02}:{:02}:{:02}.{:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        e.time_ms % 1000
    );
    let obj = match (e.vm.is_empty(), e.host.is_empty()) {
        (false, false) => format!("vm/{} @{}", e.vm, e.host),
        (false, true) => format!("vm/{}", e.vm),
        (true, false) if !e.vm_id.is_empty() => format!("vm-id/{} @{}", &e.vm_id, e.host),
        (true, false) => format!("host/{}", e.host),
        (true, true) => "-".into(),
    };
    vec![e.seq.to_string(), t, e.kind.clone(), obj, e.message.clone()]
}

/// Prints a batch of events.
pub fn print_events(evs: &[pb::Event], f: Format) {
    match f {
        Format::Json => print_json(&Value::Array(evs.iter().map(event_json).collect())),
        Format::Table => {
            let rows: Vec<Vec<String>> = evs.iter().map(event_row).collect();
            println!("{}", table(&EVENT_HEADER, &rows));
        }
    }
}

/// Prints the header of a followed event table.
pub fn print_event_header() {
    println!("{}", EVENT_HEADER.join("  "));
}

/// Prints one followed event (JSON: one object per line).
pub fn print_event_line(e: &pb::Event, f: Format) {
    match f {
        Format::Json => println!("{}", event_json(e)),
        Format::Table => println!("{}", event_row(e).join("  ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns() {
        let t = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "w".into()]],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz    w");
    }

    #[test]
    fn cgroup_line_shows_usage_and_limits() {
        assert_eq!(cgroup_line(&apb::VmMetrics::default()), None);
        let m = apb::VmMetrics {
            cgroup_memory_bytes: 40 << 20,
            cgroup_memory_limit_bytes: 184 << 20,
            cgroup_cpu_usage_ms: 1234,
            cgroup_cpu_quota_millicpus: 200,
            cgroup_pids: 4,
            cgroup_oom_kills: 0,
            ..Default::default()
        };
        assert_eq!(
            cgroup_line(&m).unwrap(),
            "cgroup: memory 40M of 184M, cpu 1234 ms (quota 0.20 CPU), 4 tasks, 0 oom kills"
        );
        let j = status_json(&apb::VmStatus {
            metrics: Some(m),
            ..Default::default()
        });
        assert_eq!(j["metrics"]["cgroup_cpu_quota_millicpus"], 200);
        assert_eq!(j["metrics"]["cgroup_memory_limit_bytes"], 184u64 << 20);
    }
}
