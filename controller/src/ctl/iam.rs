//! novactl's identity verbs (`login`, `logout`, `whoami`, `user`, `project`, `token`,
//! `audit`): their arguments, the stored login token (`$NOVACRON_CONFIG_DIR/token`, else
//! `$HOME/.config/novacron/token`, mode 0600) with the order tokens are taken in, and how
//! the verbs run against the controller's `IamService`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand, ValueEnum};
use novacron_proto::auth::read_token;
use novacron_proto::controller as pb;
use serde_json::json;
use tonic::Code;

use super::args::{Cli, Format};
use super::output::table;
use super::parse::rid;
use super::CtlError;

/// The environment variable holding a token itself.
pub const TOKEN_ENV: &str = "NOVACRON_TOKEN";
/// The metadata a login answer carries when it needs a TOTP code.
const TOTP_REQUIRED: &str = "novacron-totp";

type Client = novacron_proto::controller::iam_service_client::IamServiceClient<
    tonic::codegen::InterceptedService<
        tonic::transport::Channel,
        novacron_proto::auth::AttachToken,
    >,
>;

/// A project role as the command line spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Read only.
    Viewer,
    /// Lifecycle, migration, snapshots; deletes only its own objects.
    Operator,
    /// Everything in the project.
    Owner,
    /// Everything (API tokens of admins only).
    Admin,
}

impl RoleArg {
    fn pb(self) -> pb::Role {
        match self {
            RoleArg::Viewer => pb::Role::Viewer,
            RoleArg::Operator => pb::Role::Operator,
            RoleArg::Owner => pb::Role::Owner,
            RoleArg::Admin => pb::Role::Admin,
        }
    }
}

fn role_name(r: i32) -> &'static str {
    match pb::Role::try_from(r) {
        Ok(pb::Role::Viewer) => "viewer",
        Ok(pb::Role::Operator) => "operator",
        Ok(pb::Role::Owner) => "owner",
        Ok(pb::Role::Admin) => "admin",
        _ => "-",
    }
}

/// `login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User name.
    #[arg(long, short = 'u')]
    pub user: String,
    /// Read the password from this file instead of prompting.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// TOTP code (default: prompted for when the controller asks for one).
    #[arg(long)]
    pub totp: Option<String>,
}

/// `user` verbs.
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user (admins); the password is prompted for.
    Create {
        /// User name ([a-z0-9._-]).
        name: String,
        /// Make the user an admin.
        #[arg(long)]
        admin: bool,
        /// Read the password from this file instead of prompting.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// List users (admins).
    List,
    /// Delete a user, their memberships and API tokens (admins).
    Delete {
        /// User name.
        name: String,
    },
    /// Enrol a TOTP second factor: prints the secret and otpauth URL, then asks for a code.
    TotpEnroll {
        /// Another user (admins).
        #[arg(long, default_value = "")]
        user: String,
        /// The code confirming the enrolment (default: prompted for).
        #[arg(long)]
        code: Option<String>,
    },
}

/// Quota limits on the command line (sizes like 4G; 0: unlimited).
#[derive(Debug, Args, Default)]
pub struct QuotaArgs {
    /// Most VMs.
    #[arg(long)]
    pub max_vms: Option<u32>,
    /// Most vCPUs.
    #[arg(long)]
    pub max_vcpus: Option<u32>,
    /// Most memory (e.g. 64G).
    #[arg(long)]
    pub max_memory: Option<String>,
    /// Most disk (e.g. 1T).
    #[arg(long)]
    pub max_disk: Option<String>,
}

impl QuotaArgs {
    fn is_empty(&self) -> bool {
        self.max_vms.is_none()
            && self.max_vcpus.is_none()
            && self.max_memory.is_none()
            && self.max_disk.is_none()
    }

    /// The quota: `base` with the limits given here replaced.
    fn apply(&self, mut q: pb::Quota) -> Result<pb::Quota, CtlError> {
        let size = |what: &'static str, s: &str| {
            novacron_vmm_api::units::parse_size(s).map_err(|source| CtlError::Unit { what, source })
        };
        if let Some(n) = self.max_vms {
            q.max_vms = n;
        }
        if let Some(n) = self.max_vcpus {
            q.max_vcpus = n;
        }
        if let Some(s) = &self.max_memory {
            q.max_memory_bytes = if s == "0" {
                0
            } else {
                size("--max-memory", s)?
            };
        }
        if let Some(s) = &self.max_disk {
            q.max_disk_bytes = if s == "0" { 0 } else { size("--max-disk", s)? };
        }
        Ok(q)
    }
}

/// `project` verbs.
#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Create a project (admins).
    Create {
        /// Project name ([a-z0-9._-]).
        name: String,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Its quota.
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// The projects you see.
    List,
    /// Delete an empty project (admins).
    Delete {
        /// Project name.
        name: String,
    },
    /// Add a member, or change a member's role (admins and the project's owners).
    AddMember {
        /// Project.
        project: String,
        /// User.
        user: String,
        /// Role.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Remove a member.
    RemoveMember {
        /// Project.
        project: String,
        /// User.
        user: String,
    },
    /// The project's members.
    Members {
        /// Project.
        project: String,
    },
    /// Show the project's quota and usage, or set limits (admins).
    Quota {
        /// Project.
        project: String,
        /// Limits to set.
        #[command(flatten)]
        quota: QuotaArgs,
    },
}

/// `token` verbs (the project is the global `--project`).
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create an API token for automation; it is printed once.
    Create {
        /// Its role in the project (`admin`: an admin token, no project).
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Valid for this long (e.g. 30d; default: until revoked).
        #[arg(long)]
        ttl: Option<String>,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Your API tokens (admins: everyone's, or one user's).
    List {
        /// Only this user's (admins).
        #[arg(long, default_value = "")]
        user: String,
    },
    /// Revoke an API token.
    Revoke {
        /// Token id.
        id: String,
    },
}

/// `audit` (the project is the global `--project`).
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only records since then: RFC 3339 (2026-01-02T03:04:05Z) or an age (1h, 30m, 2d).
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
}

/// Where `novactl login` keeps its token.
pub fn token_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("NOVACRON_CONFIG_DIR") {
        return Some(PathBuf::from(d).join("token"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/novacron/token"))
}

/// The token a command sends: `--token-file`, then `NOVACRON_TOKEN_FILE`, then
/// `NOVACRON_TOKEN`, then the one `novactl login` stored (none: no token).
pub fn token_for(cli: &Cli) -> Result<Option<String>, CtlError> {
    let file = cli
        .token_file
        .clone()
        .or_else(|| std::env::var_os("NOVACRON_TOKEN_FILE").map(PathBuf::from));
    if let Some(p) = file {
        return Ok(Some(read_token(&p)?));
    }
    if let Ok(t) = std::env::var(TOKEN_ENV) {
        if !t.trim().is_empty() {
            return Ok(Some(t.trim().to_string()));
        }
    }
    match token_path() {
        Some(p) if p.exists() => Ok(Some(read_token(&p)?)),
        _ => Ok(None),
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> CtlError {
    move |e| CtlError::Usage(format!("{what}: {e}"))
}

/// Stores a login token (directory 0700, file 0600).
fn store_token(token: &str) -> Result<PathBuf, CtlError> {
    let p = token_path().ok_or_else(|| {
        CtlError::Usage(
            "neither NOVACRON_CONFIG_DIR nor HOME is set: nowhere to keep the token".into(),
        )
    })?;
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(io(d.display().to_string()))?;
        let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700));
    }
    let tmp = p.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(tmp.display().to_string()))?;
    f.write_all(token.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(tmp.display().to_string()))?;
    std::fs::rename(&tmp, &p).map_err(io(p.display().to_string()))?;
    Ok(p)
}

fn read_secret(file: &Option<PathBuf>, prompt: &str) -> Result<String, CtlError> {
    match file {
        Some(p) => Ok(std::fs::read_to_string(p)
            .map_err(io(p.display().to_string()))?
            .trim_end_matches(['\r', '\n'])
            .to_string()),
        None => rpassword::prompt_password(prompt).map_err(io("reading the password".into())),
    }
}

fn prompt_line(prompt: &str) -> Result<String, CtlError> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut s = String::new();
    std::io::stdin()
        .read_line(&mut s)
        .map_err(io("reading standard input".into()))?;
    Ok(s.trim().to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn time(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

/// `--since`: RFC 3339, or an age before now (`1h`, `30m`, `2d`).
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64, CtlError> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        return Ok(ms);
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(now_ms - d.as_millis() as i64),
        Err(_) => Err(CtlError::Usage(format!(
            "--since {s:?}: give an RFC 3339 time (2026-01-02T03:04:05Z) or an age (1h, 30m, 2d)"
        ))),
    }
}

/// `login`: asks for the password (and the TOTP code when the controller wants one) and
/// stores the session token.
pub async fn login(c: &mut Client, a: LoginArgs, f: Format) -> Result<(), CtlError> {
    let password = read_secret(&a.password_file, &format!("Password for {}: ", a.user))?;
    let mut code = a.totp.clone().unwrap_or_default();
    let r = loop {
        let req = pb::LoginRequest {
            user: a.user.clone(),
            password: password.clone(),
            totp_code: code.clone(),
        };
        match c.login(req).await {
            Ok(r) => break r.into_inner(),
            Err(s)
                if s.code() == Code::Unauthenticated
                    && code.is_empty()
                    && s.metadata().get(TOTP_REQUIRED).is_some() =>
            {
                code = prompt_line("TOTP code: ")?;
                if code.is_empty() {
                    return Err(CtlError::Usage("no TOTP code given".into()));
                }
            }
            Err(s) => return Err(s.into()),
        }
    };
    let path = store_token(&r.token)?;
    match f {
        Format::Json => println!(
            "{}",
            json!({"user": a.user, "expires_at_ms": r.expires_at_ms, "token_file": path.display().to_string()})
        ),
        Format::Table => println!(
            "logged in as {} until {} (token in {})",
            a.user,
            time(r.expires_at_ms),
            path.display()
        ),
    }
    Ok(())
}

/// `logout`: forgets the stored token.
pub fn logout() -> Result<(), CtlError> {
    if let Some(p) = token_path() {
        match std::fs::remove_file(&p) {
            Ok(()) => println!("token {} removed", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("not logged in"),
            Err(e) => return Err(io(p.display().to_string())(e)),
        }
    }
    Ok(())
}

fn print_members(ms: &[pb::Member], f: Format) {
    match f {
        Format::Json => println!(
            "{}",
            serde_json::Value::Array(
                ms.iter()
                    .map(
                        |m| json!({"project": m.project, "user": m.user, "role": role_name(m.role)})
                    )
                    .collect()
            )
        ),
        Format::Table => {
            let rows: Vec<Vec<String>> = ms
                .iter()
                .map(|m| vec![m.project.clone(), m.user.clone(), role_name(m.role).into()])
                .collect();
            println!("{}", table(&["PROJECT", "USER", "ROLE"], &rows));
        }
    }
}

fn print_users(us: &[pb::User], f: Format) {
    match f {
        Format::Json => println!(
            "{}",
            serde_json::Value::Array(
                us.iter()
                    .map(|u| json!({"name": u.name, "admin": u.admin, "totp": u.totp_enabled, "created_at_ms": u.created_at_ms}))
                    .collect()
            )
        ),
        Format::Table => {
            let rows: Vec<Vec<String>> = us
                .iter()
                .map(|u| {
                    vec![
                        u.name.clone(),
                        if u.admin { "yes" } else { "no" }.into(),
                        if u.totp_enabled { "yes" } else { "no" }.into(),
                        time(u.created_at_ms),
                    ]
                })
                .collect();
            println!("{}", table(&["NAME", "ADMIN", "TOTP", "CREATED"], &rows));
        }
    }
}

fn limit(n: u64) -> String {
    if n == 0 {
        "-".into()
    } else {
        n.to_string()
    }
}

fn print_quota(q: &pb::QuotaResponse, f: Format) {
    let quota = q.quota.unwrap_or_default();
    let usage = q.usage.unwrap_or_default();
    match f {
        Format::Json => println!(
            "{}",
            json!({
                "project": q.project,
                "quota": {"max_vms": quota.max_vms, "max_vcpus": quota.max_vcpus,
                          "max_memory_bytes": quota.max_memory_bytes, "max_disk_bytes": quota.max_disk_bytes},
                "usage": {"vms": usage.vms, "vcpus": usage.vcpus,
                          "memory_bytes": usage.memory_bytes, "disk_bytes": usage.disk_bytes},
            })
        ),
        Format::Table => {
            let rows = vec![
                vec![
                    "vms".into(),
                    usage.vms.to_string(),
                    limit(quota.max_vms.into()),
                ],
                vec![
                    "vcpus".into(),
                    usage.vcpus.to_string(),
                    limit(quota.max_vcpus.into()),
                ],
                vec![
                    "memory_bytes".into(),
                    usage.memory_bytes.to_string(),
                    limit(quota.max_memory_bytes),
                ],
                vec![
                    "disk_bytes".into(),
                    usage.disk_bytes.to_string(),
                    limit(quota.max_disk_bytes),
                ],
            ];
            println!(
                "project {}\n{}",
                q.project,
                table(&["RESOURCE", "USED", "QUOTA"], &rows)
            );
        }
    }
}

fn print_tokens(ts: &[pb::ApiToken], f: Format) {
    match f {
        Format::Json => println!(
            "{}",
            serde_json::Value::Array(
                ts.iter()
                    .map(|t| json!({"id": t.id, "user": t.user, "project": t.project, "role": role_name(t.role),
                                    "description": t.description, "created_at_ms": t.created_at_ms,
                                    "expires_at_ms": t.expires_at_ms, "revoked": t.revoked}))
                    .collect()
            )
        ),
        Format::Table => {
            let rows: Vec<Vec<String>> = ts
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.user.clone(),
                        if t.project.is_empty() { "-".into() } else { t.project.clone() },
                        role_name(t.role).into(),
                        time(t.expires_at_ms),
                        if t.revoked { "yes" } else { "no" }.into(),
                        t.description.clone(),
                    ]
                })
                .collect();
            println!(
                "{}",
                table(&["ID", "USER", "PROJECT", "ROLE", "EXPIRES", "REVOKED", "DESCRIPTION"], &rows)
            );
        }
    }
}

fn print_audit(rs: &[pb::AuditRecord], f: Format) {
    match f {
        Format::Json => println!(
            "{}",
            serde_json::Value::Array(
                rs.iter()
                    .map(|r| json!({"seq": r.seq, "time_ms": r.time_ms, "principal": r.principal,
                                    "project": r.project, "method": r.method, "object": r.object,
                                    "request_id": r.request_id, "result": r.result, "message": r.message}))
                    .collect()
            )
        ),
        Format::Table => {
            let rows: Vec<Vec<String>> = rs
                .iter()
                .map(|r| {
                    vec![
                        time(r.time_ms),
                        r.principal.clone(),
                        r.project.clone(),
                        r.method.clone(),
                        r.object.clone(),
                        r.result.clone(),
                        r.request_id.clone(),
                    ]
                })
                .collect();
            println!(
                "{}",
                table(&["TIME", "WHO", "PROJECT", "METHOD", "OBJECT", "RESULT", "REQUEST"], &rows)
            );
        }
    }
}

/// `whoami`.
pub async fn whoami(c: &mut Client, f: Format) -> Result<(), CtlError> {
    let r = c.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
    match f {
        Format::Json => println!(
            "{}",
            json!({"user": r.user, "admin": r.admin, "token_id": r.token_id,
                   "memberships": r.memberships.iter().map(|m| json!({"project": m.project, "role": role_name(m.role)})).collect::<Vec<_>>()})
        ),
        Format::Table => {
            let via = if r.token_id.is_empty() {
                String::new()
            } else {
                format!(" (API token {})", r.token_id)
            };
            println!("{}{}{via}", r.user, if r.admin { ", admin" } else { "" });
            if !r.memberships.is_empty() {
                print_members(&r.memberships, f);
            }
        }
    }
    Ok(())
}

/// `user ...`.
pub async fn user(c: &mut Client, cmd: UserCmd, f: Format) -> Result<(), CtlError> {
    match cmd {
        UserCmd::Create {
            name,
            admin,
            password_file,
        } => {
            let password = read_secret(&password_file, &format!("Password for new user {name}: "))?;
            if password_file.is_none() {
                let again = read_secret(&None, "Again: ")?;
                if again != password {
                    return Err(CtlError::Usage("the passwords differ".into()));
                }
            }
            let u = c
                .create_user(pb::CreateUserRequest {
                    request_id: rid(&None),
                    name,
                    password,
                    admin,
                })
                .await?
                .into_inner();
            print_users(&[u], f);
        }
        UserCmd::List => print_users(
            &c.list_users(pb::ListUsersRequest {})
                .await?
                .into_inner()
                .users,
            f,
        ),
        UserCmd::Delete { name } => {
            let u = c
                .delete_user(pb::DeleteUserRequest {
                    request_id: rid(&None),
                    name,
                })
                .await?
                .into_inner();
            println!("user {} deleted", u.name);
        }
        UserCmd::TotpEnroll { user, code } => {
            let e = c
                .enroll_totp(pb::EnrollTotpRequest {
                    request_id: rid(&None),
                    user: user.clone(),
                })
                .await?
                .into_inner();
            match f {
                Format::Json => {
                    println!(
                        "{}",
                        json!({"secret": e.secret, "otpauth_url": e.otpauth_url})
                    )
                }
                Format::Table => {
                    println!("secret:      {}\notpauth URL: {}", e.secret, e.otpauth_url)
                }
            }
            let code = match code {
                Some(c) => c,
                None => prompt_line("code from the authenticator: ")?,
            };
            let u = c
                .confirm_totp(pb::ConfirmTotpRequest {
                    request_id: rid(&None),
                    user,
                    code,
                })
                .await?
                .into_inner();
            if f == Format::Table {
                println!("TOTP enabled for {}", u.name);
            }
        }
    }
    Ok(())
}

/// `project ...`.
pub async fn project(c: &mut Client, cmd: ProjectCmd, f: Format) -> Result<(), CtlError> {
    match cmd {
        ProjectCmd::Create {
            name,
            description,
            quota,
        } => {
            let q = quota.apply(pb::Quota::default())?;
            let p = c
                .create_project(pb::CreateProjectRequest {
                    request_id: rid(&None),
                    name,
                    description,
                    quota: Some(q),
                })
                .await?
                .into_inner();
            println!("project {} created", p.name);
        }
        ProjectCmd::List => {
            let ps = c
                .list_projects(pb::ListProjectsRequest {})
                .await?
                .into_inner()
                .projects;
            match f {
                Format::Json => println!(
                    "{}",
                    serde_json::Value::Array(
                        ps.iter()
                            .map(|p| json!({"name": p.name, "description": p.description, "created_at_ms": p.created_at_ms}))
                            .collect()
                    )
                ),
                Format::Table => {
                    let rows: Vec<Vec<String>> = ps
                        .iter()
                        .map(|p| vec![p.name.clone(), time(p.created_at_ms), p.description.clone()])
                        .collect();
                    println!("{}", table(&["NAME", "CREATED", "DESCRIPTION"], &rows));
                }
            }
        }
        ProjectCmd::Delete { name } => {
            let p = c
                .delete_project(pb::DeleteProjectRequest {
                    request_id: rid(&None),
                    name,
                })
                .await?
                .into_inner();
            println!("project {} deleted", p.name);
        }
        ProjectCmd::AddMember {
            project,
            user,
            role,
        } => {
            let m = c
                .add_member(pb::AddMemberRequest {
                    request_id: rid(&None),
                    project,
                    user,
                    role: role.pb() as i32,
                })
                .await?
                .into_inner();
            print_members(&[m], f);
        }
        ProjectCmd::RemoveMember { project, user } => {
            let m = c
                .remove_member(pb::RemoveMemberRequest {
                    request_id: rid(&None),
                    project,
                    user,
                })
                .await?
                .into_inner();
            println!("{} removed from project {}", m.user, m.project);
        }
        ProjectCmd::Members { project } => {
            let ms = c
                .list_members(pb::ListMembersRequest { project })
                .await?
                .into_inner()
                .members;
            print_members(&ms, f);
        }
        ProjectCmd::Quota { project, quota } => {
            let cur = c
                .get_quota(pb::GetQuotaRequest {
                    project: project.clone(),
                })
                .await?
                .into_inner();
            let r = if quota.is_empty() {
                cur
            } else {
                c.set_quota(pb::SetQuotaRequest {
                    request_id: rid(&None),
                    project,
                    quota: Some(quota.apply(cur.quota.unwrap_or_default())?),
                })
                .await?
                .into_inner()
            };
            print_quota(&r, f);
        }
    }
    Ok(())
}

/// `token ...`.
pub async fn token(
    c: &mut Client,
    cmd: TokenCmd,
    project: &str,
    f: Format,
) -> Result<(), CtlError> {
    match cmd {
        TokenCmd::Create {
            role,
            ttl,
            description,
        } => {
            let ttl_seconds = match ttl {
                Some(t) => humantime::parse_duration(&t)
                    .map_err(|e| CtlError::Usage(format!("--ttl {t:?}: {e} (e.g. 12h, 30d)")))?
                    .as_secs(),
                None => 0,
            };
            let r = c
                .create_api_token(pb::CreateApiTokenRequest {
                    request_id: rid(&None),
                    project: project.to_string(),
                    role: role.pb() as i32,
                    description,
                    ttl_seconds,
                })
                .await?
                .into_inner();
            let info = r.info.unwrap_or_default();
            match f {
                Format::Json => println!("{}", json!({"id": info.id, "token": r.token})),
                Format::Table => {
                    println!("{}", r.token);
                    eprintln!(
                        "API token {} ({} in {}): shown once, keep it in a file for --token-file",
                        info.id,
                        role_name(info.role),
                        if info.project.is_empty() {
                            "every project"
                        } else {
                            &info.project
                        }
                    );
                }
            }
        }
        TokenCmd::List { user } => {
            let ts = c
                .list_api_tokens(pb::ListApiTokensRequest { user })
                .await?
                .into_inner()
                .tokens;
            print_tokens(&ts, f);
        }
        TokenCmd::Revoke { id } => {
            let t = c
                .revoke_api_token(pb::RevokeApiTokenRequest {
                    request_id: rid(&None),
                    id,
                })
                .await?
                .into_inner();
            println!("API token {} revoked", t.id);
        }
    }
    Ok(())
}

/// `audit`.
pub async fn audit(c: &mut Client, a: AuditArgs, project: &str, f: Format) -> Result<(), CtlError> {
    let since_ms = match &a.since {
        Some(s) => parse_since(s, now_ms())?,
        None => 0,
    };
    let rs = c
        .list_audit(pb::ListAuditRequest {
            project: project.to_string(),
            since_ms,
            limit: a.limit,
        })
        .await?
        .into_inner()
        .records;
    print_audit(&rs, f);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_and_ages() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_since("1h", now).unwrap(), now - 3_600_000);
        assert_eq!(parse_since("30m", now).unwrap(), now - 1_800_000);
        assert_eq!(
            parse_since("2027-01-15T08:00:00Z", now).unwrap(),
            1_800_000_000_000
        );
        assert!(parse_since("yesterday", now).is_err());
    }
}
