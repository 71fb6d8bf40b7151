//! novactl's storage verbs (`vm snapshot|snapshots|snapshot-delete|restore|clone|template|
//! templates|snapshot-export|snapshot-import`, `vm create --template`): their arguments and how they run against the
//! controller's `StorageService`.

use clap::Args;
use novacron_proto::controller as pb;
use serde_json::json;
use tonic::transport::Channel;

use super::args::Format;
use super::output::{print_vm, table};
use super::parse::rid;
use super::CtlError;

/// `vm snapshot`, `vm snapshot-delete`.
#[derive(Debug, Args)]
pub struct SnapArgs {
    /// VM name or id.
    pub name: String,
    /// Snapshot name.
    pub snapshot: String,
    /// Client request id.
    #[arg(long)]
    pub request_id: Option<String>,
}

/// `vm restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// VM name or id.
    pub name: String,
    /// Snapshot name.
    pub snapshot: String,
    /// Leave the guest paused at the snapshot point.
    #[arg(long)]
    pub paused: bool,
    /// Client request id.
    #[arg(long)]
    pub request_id: Option<String>,
}

/// `vm clone`.
#[derive(Debug, Args)]
pub struct CloneArgs {
    /// Source VM (name or id).
    pub source: String,
    /// Name of the new VM.
    pub name: String,
    /// Clone this snapshot of the source (default: its current disks; it must be stopped).
    #[arg(long, default_value = "")]
    pub snapshot: String,
    /// Create without starting.
    #[arg(long)]
    pub stopped: bool,
    /// Client request id.
    #[arg(long)]
    pub request_id: Option<String>,
}

/// `vm template`.
#[derive(Debug, Args)]
pub struct TemplateArgs {
    /// VM name or id.
    pub name: String,
    /// Mark this snapshot of the VM instead of the VM.
    #[arg(long, default_value = "")]
    pub snapshot: String,
    /// Remove the mark.
    #[arg(long)]
    pub unset: bool,
    /// Client request id.
    #[arg(long)]
    pub request_id: Option<String>,
}

/// `vm snapshot-export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// VM name or id.
    pub name: String,
    /// Snapshot name.
    pub snapshot: String,
    /// Absolute path of the backup file to create on the snapshot's host.
    #[arg(long)]
    pub to: String,
    /// Client request id.
    #[arg(long)]
    pub request_id: Option<String>,
}

/// `vm snapshot-import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Name of the new VM.
    pub name: String,
    /// Host holding the backup file (the new VM lives there).
    #[arg(long)]
    pub host: String,
    /// Absolute path of the backup file on that host.
    #[arg(long)]
    pub from: String,
    /// Name of the imported snapshot (default: the exported snapshot's name).
    #[arg(long, default_value = "")]
    pub snapshot: String,
    /// Client request id.
    #[arg(long)]
    pub request_id: Option<String>,
}

/// `vm snapshots`.
#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// VM name or id (empty: every VM).
    #[arg(default_value = "")]
    pub name: String,
}

type Client = novacron_proto::controller::storage_service_client::StorageServiceClient<
    tonic::codegen::InterceptedService<Channel, novacron_proto::auth::AttachToken>,
>;

/// `--template T` of `vm create`: `VM` or `VM:SNAPSHOT`.
pub fn template_source(t: &str) -> (String, String) {
    match t.split_once(':') {
        Some((vm, snap)) => (vm.to_string(), snap.to_string()),
        None => (t.to_string(), String::new()),
    }
}

fn snapshot_json(s: &pb::Snapshot) -> serde_json::Value {
    json!({
        "vm": s.vm, "vm_id": s.vm_id, "name": s.name, "host": s.host,
        "created_at_ms": s.created_at_ms, "template": s.template, "paused_ms": s.paused_ms,
        "memory_bytes": s.memory_bytes,
        "disks": s.disks.iter().map(|d| json!({"index": d.index, "size": d.size, "allocated": d.allocated})).collect::<Vec<_>>(),
    })
}

fn print_snapshots(snaps: &[pb::Snapshot], f: Format) {
    match f {
        Format::Json => {
            let v: Vec<_> = snaps.iter().map(snapshot_json).collect();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = snaps
                .iter()
                .map(|s| {
                    vec![
                        s.vm.clone(),
                        s.name.clone(),
                        s.host.clone(),
                        format!("{:.1}", s.paused_ms),
                        format!("{}", s.memory_bytes >> 20),
                        s.disks.len().to_string(),
                        if s.template { "yes" } else { "" }.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "VM",
                        "SNAPSHOT",
                        "HOST",
                        "PAUSED_MS",
                        "MEM_MIB",
                        "DISKS",
                        "TEMPLATE"
                    ],
                    &rows
                )
            );
        }
    }
}

/// `vm snapshot NAME SNAP`.
pub async fn snapshot(c: &mut Client, a: SnapArgs, f: Format) -> Result<(), CtlError> {
    let req = pb::CreateSnapshotRequest {
        request_id: rid(&a.request_id),
        vm: a.name,
        snapshot: a.snapshot,
    };
    let s = c.create_snapshot(req).await?.into_inner();
    print_snapshots(&[s], f);
    Ok(())
}

/// `vm snapshots [NAME]` (every page).
pub async fn snapshots(
    c: &mut Client,
    a: SnapshotsArgs,
    project: &str,
    f: Format,
) -> Result<(), CtlError> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_snapshots(pb::ListSnapshotsRequest {
                vm: a.name.clone(),
                page_size: 500,
                page_token: token,
                project: project.to_string(),
            })
            .await?
            .into_inner();
        all.extend(r.snapshots);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    print_snapshots(&all, f);
    Ok(())
}

/// `vm snapshot-delete NAME SNAP`.
pub async fn snapshot_delete(c: &mut Client, a: SnapArgs, f: Format) -> Result<(), CtlError> {
    let req = pb::SnapshotActionRequest {
        request_id: rid(&a.request_id),
        vm: a.name,
        snapshot: a.snapshot,
    };
    let r = c.delete_snapshot(req).await?.into_inner();
    match f {
        Format::Json => println!(
            "{}",
            json!({"vm": r.vm, "snapshot": r.snapshot, "deleted": true})
        ),
        Format::Table => println!("snapshot {} of vm {} deleted", r.snapshot, r.vm),
    }
    Ok(())
}

/// `vm restore NAME SNAP [--paused]`.
pub async fn restore(c: &mut Client, a: RestoreArgs, f: Format) -> Result<(), CtlError> {
    let req = pb::RestoreSnapshotRequest {
        request_id: rid(&a.request_id),
        vm: a.name,
        snapshot: a.snapshot,
        paused: a.paused,
    };
    print_vm(&c.restore_snapshot(req).await?.into_inner(), f);
    Ok(())
}

/// `vm clone SRC NEW [--snapshot S]`, and `vm create NEW --template T` (`require_template`).
pub async fn clone(
    c: &mut Client,
    a: CloneArgs,
    require_template: bool,
    f: Format,
) -> Result<(), CtlError> {
    let req = pb::CloneVmRequest {
        request_id: rid(&a.request_id),
        source: a.source,
        snapshot: a.snapshot,
        name: a.name,
        stopped: a.stopped,
        require_template,
    };
    print_vm(&c.clone_vm(req).await?.into_inner(), f);
    Ok(())
}

fn print_templates(ts: &[pb::Template], f: Format) {
    match f {
        Format::Json => {
            let v: Vec<_> = ts
                .iter()
                .map(|t| json!({"vm": t.vm, "vm_id": t.vm_id, "snapshot": t.snapshot, "host": t.host, "template": t.template}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = ts
                .iter()
                .map(|t| {
                    let name = if t.snapshot.is_empty() {
                        t.vm.clone()
                    } else {
                        format!("{}:{}", t.vm, t.snapshot)
                    };
                    vec![
                        name,
                        t.host.clone(),
                        if t.template { "yes" } else { "no" }.into(),
                    ]
                })
                .collect();
            print!("{}", table(&["TEMPLATE", "HOST", "MARKED"], &rows));
        }
    }
}

/// `vm template NAME [--snapshot S] [--unset]`.
pub async fn template(c: &mut Client, a: TemplateArgs, f: Format) -> Result<(), CtlError> {
    let req = pb::SetTemplateRequest {
        request_id: rid(&a.request_id),
        vm: a.name,
        snapshot: a.snapshot,
        template: !a.unset,
    };
    print_templates(&[c.set_template(req).await?.into_inner()], f);
    Ok(())
}

/// `vm templates`.
pub async fn templates(c: &mut Client, project: &str, f: Format) -> Result<(), CtlError> {
    let r = c
        .list_templates(pb::ListTemplatesRequest {
            project: project.to_string(),
        })
        .await?
        .into_inner();
    print_templates(&r.templates, f);
    Ok(())
}

fn backup_json(b: &Option<novacron_proto::agent::BackupInfo>) -> serde_json::Value {
    let b = b.clone().unwrap_or_default();
    json!({"path": b.path, "files": b.files, "data_bytes": b.data_bytes, "backup_bytes": b.backup_bytes})
}

/// `vm snapshot-export NAME SNAP --to PATH`.
pub async fn export(c: &mut Client, a: ExportArgs, f: Format) -> Result<(), CtlError> {
    let req = pb::ExportSnapshotRequest {
        request_id: rid(&a.request_id),
        vm: a.name,
        snapshot: a.snapshot,
        path: a.to,
    };
    let r = c.export_snapshot(req).await?.into_inner();
    match f {
        Format::Json => println!(
            "{}",
            json!({"vm": r.vm, "snapshot": r.snapshot, "host": r.host, "backup": backup_json(&r.backup)})
        ),
        Format::Table => {
            let b = r.backup.unwrap_or_default();
            println!(
                "snapshot {} of vm {} exported to {}:{} ({} files, {} bytes of data, {} bytes)",
                r.snapshot, r.vm, r.host, b.path, b.files, b.data_bytes, b.backup_bytes
            );
        }
    }
    Ok(())
}

/// `vm snapshot-import NEW --host HOST --from PATH [--snapshot S]`.
pub async fn import(
    c: &mut Client,
    a: ImportArgs,
    project: &str,
    f: Format,
) -> Result<(), CtlError> {
    let req = pb::ImportSnapshotRequest {
        request_id: rid(&a.request_id),
        host: a.host,
        path: a.from,
        name: a.name,
        snapshot: a.snapshot,
        project: project.to_string(),
    };
    let r = c.import_snapshot(req).await?.into_inner();
    match f {
        Format::Json => println!(
            "{}",
            json!({
                "vm": r.vm.as_ref().map(|v| json!({"name": v.name, "id": v.id, "host": v.host})),
                "snapshot": r.snapshot.as_ref().map(snapshot_json),
                "backup": backup_json(&r.backup),
            })
        ),
        Format::Table => {
            if let Some(vm) = &r.vm {
                print_vm(vm, f);
            }
            if let Some(s) = &r.snapshot {
                println!(
                    "snapshot {} (restore it: novactl vm restore {} {})",
                    s.name, s.vm, s.name
                );
            }
        }
    }
    Ok(())
}
