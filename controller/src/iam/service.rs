//! `IamService` of `proto/iam.proto`: login, users, TOTP, projects, members, quotas, API
//! tokens and the audit log. Every mutating call is audited (see [`super::audit`]).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use novacron_proto::controller as pb;
use novacron_proto::controller::iam_service_server::IamService;
use prost::Message;
use tonic::{Request, Response, Status};

use super::audit::{self, Call};
use super::authn::principal;
use super::roles::Scope;
use super::tokens::{self, TokenRecord};
use super::users::{self, UserRecord};
use super::{
    check, check_name, check_scope, decode, member_key, project_key, project_not_found,
    requested_project, token_key, user_key, Action, IamError, Principal, Role, SESSION_TTL_S,
};
use crate::controller::Controller;
use crate::store::Op;
use crate::util::now_ms;

/// The metadata key telling a client that the login needs a TOTP code.
pub const TOTP_REQUIRED: &str = "novacron-totp";

/// The identity and access service.
#[derive(Debug, Clone)]
pub struct IamApi(pub Arc<Controller>);

type R<T> = Result<Response<T>, Status>;

fn user_not_found(name: &str) -> Status {
    Status::not_found(format!("user {name} not found"))
}

fn admin_only(p: &Principal) -> Result<(), Status> {
    check(p, Action::Admin, None, String::new)
}

/// A PHC string to verify against when the user does not exist, so that a wrong name costs
/// as long as a wrong password.
fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| users::hash_password("no such user, no such password").unwrap_or_default())
}

impl IamApi {
    fn iam(&self) -> &super::Iam {
        self.0.iam()
    }

    fn finish<T>(&self, call: Call, r: Result<T, Status>) -> R<T> {
        call.finish(self.iam().store(), r).map(Response::new)
    }

    fn user(&self, name: &str) -> Result<UserRecord, Status> {
        users::get(self.iam().store(), name)?.ok_or_else(|| user_not_found(name))
    }

    /// The user a TOTP call is about: the caller (in a login session), or (admins) the one
    /// named.
    fn target(&self, p: &Principal, named: &str) -> Result<UserRecord, Status> {
        if p.token.is_some() && !p.is_admin() {
            // A leaked automation token must not be able to replace its user's second factor.
            return Err(Status::permission_denied(
                "TOTP enrolment needs a login session (novactl login), not an API token",
            ));
        }
        if named.is_empty() || named == p.user {
            return self.user(&p.user);
        }
        admin_only(p)?;
        self.user(named)
    }

    fn login(&self, req: &pb::LoginRequest) -> Result<pb::LoginResponse, Status> {
        let throttle = self.iam().login_throttle();
        let now = Instant::now();
        if let Some(wait) = throttle.refused_for(&req.user, now) {
            return Err(Status::resource_exhausted(format!(
                "too many failed logins for user {}: try again in {} s",
                req.user,
                wait.as_secs().max(1)
            )));
        }
        let res = self.check_login(req);
        match &res {
            Ok(_) => throttle.succeeded(&req.user),
            // A password that is right but lacks its second factor is not a failure.
            Err(s) if s.metadata().get(TOTP_REQUIRED).is_some() => {}
            Err(s) if s.code() == tonic::Code::Unauthenticated => throttle.failed(&req.user, now),
            Err(_) => {}
        }
        res
    }

    /// Checks the password and second factor of a login and issues its session token.
    fn check_login(&self, req: &pb::LoginRequest) -> Result<pb::LoginResponse, Status> {
        let bad = || Status::unauthenticated("invalid user name or password");
        let Some(mut u) = users::get(self.iam().store(), &req.user)? else {
            let _ = users::verify_password(dummy_hash(), &req.password);
            return Err(bad());
        };
        if !users::verify_password(&u.password_hash, &req.password) {
            return Err(bad());
        }
        let now_s = now_ms().max(0) as u64 / 1000;
        if !u.totp_secret.is_empty() {
            if req.totp_code.is_empty() {
                let mut s = Status::unauthenticated(
                    "TOTP code required: user has a second factor enrolled",
                );
                s.metadata_mut().insert(
                    TOTP_REQUIRED,
                    tonic::metadata::MetadataValue::from_static("required"),
                );
                return Err(s);
            }
            match users::check_totp(&u.totp_secret, &req.totp_code, now_s, u.totp_last_step)? {
                Some(step) => {
                    u.totp_last_step = step;
                    users::put(self.iam().store(), &u)?;
                }
                None => return Err(Status::unauthenticated("invalid TOTP code")),
            }
        }
        let (token, expires_at_ms) =
            self.iam()
                .signing_key()
                .issue(&req.user, now_s, SESSION_TTL_S)?;
        Ok(pb::LoginResponse {
            token,
            expires_at_ms,
        })
    }

    fn usage(&self, project: &str) -> pb::Usage {
        self.0.project_usage(project)
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, Status> {
        self.iam()
            .store()
            .iam_records("token/")
            .map_err(IamError::from)?
            .into_iter()
            .map(|(k, v)| decode(&k, &v).map_err(Status::from))
            .collect()
    }
}

fn role_arg(r: i32) -> Result<Role, Status> {
    Role::from_pb(r).ok_or_else(|| {
        Status::invalid_argument("role must be viewer, operator or owner".to_string())
    })
}

#[tonic::async_trait]
impl IamService for IamApi {
    async fn login(&self, r: Request<pb::LoginRequest>) -> R<pb::LoginResponse> {
        let req = r.into_inner();
        let call = Call::named(&req.user, "IamService/Login", "", &req.user);
        // argon2 takes tens of milliseconds of CPU: off the async workers.
        let this = self.clone();
        let res = tokio::task::spawn_blocking(move || this.login(&req))
            .await
            .unwrap_or_else(|e| Err(Status::internal(format!("login: {e}"))));
        self.finish(call, res)
    }

    async fn who_am_i(&self, r: Request<pb::WhoAmIRequest>) -> R<pb::WhoAmIResponse> {
        let p = principal(&r)?;
        let memberships = match &p.scope {
            Some(Scope::Project(proj, _)) => p
                .role_in(proj)
                .map(|role| pb::Member {
                    project: proj.clone(),
                    user: p.user.clone(),
                    role: role.to_pb() as i32,
                })
                .into_iter()
                .collect(),
            _ => p
                .roles
                .iter()
                .map(|(proj, role)| pb::Member {
                    project: proj.clone(),
                    user: p.user.clone(),
                    role: role.to_pb() as i32,
                })
                .collect(),
        };
        Ok(Response::new(pb::WhoAmIResponse {
            user: p.user.clone(),
            admin: p.is_admin(),
            token_id: p.token.clone().unwrap_or_default(),
            memberships,
        }))
    }

    async fn create_user(&self, r: Request<pb::CreateUserRequest>) -> R<pb::User> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let call = Call::new(&p, "IamService/CreateUser", &req.request_id, &req.name);
        let res = (|| {
            admin_only(&p)?;
            check_name("user", &req.name)?;
            if users::get(self.iam().store(), &req.name)?.is_some() {
                return Err(
                    IamError::AlreadyExists(format!("user {} already exists", req.name)).into(),
                );
            }
            let rec = users::new_record(&req.name, &req.password, req.admin)?;
            users::put(self.iam().store(), &rec)?;
            Ok(rec.user.unwrap_or_default())
        })();
        self.finish(call, res)
    }

    async fn list_users(&self, r: Request<pb::ListUsersRequest>) -> R<pb::ListUsersResponse> {
        let p = principal(&r)?;
        admin_only(&p)?;
        let users = users::all(self.iam().store())?
            .into_iter()
            .filter_map(|u| u.user)
            .collect();
        Ok(Response::new(pb::ListUsersResponse { users }))
    }

    async fn delete_user(&self, r: Request<pb::DeleteUserRequest>) -> R<pb::User> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let call = Call::new(&p, "IamService/DeleteUser", &req.request_id, &req.name);
        let res = (|| {
            admin_only(&p)?;
            let u = self.user(&req.name)?;
            let all = users::all(self.iam().store())?;
            if u.admin() && all.iter().filter(|x| x.admin()).count() == 1 {
                return Err(Status::failed_precondition(format!(
                    "{} is the last admin: make another admin first",
                    req.name
                )));
            }
            let mut keys = vec![user_key(&req.name)];
            for m in self.iam().members(None)? {
                if m.user == req.name {
                    keys.push(member_key(&m.project, &m.user));
                }
            }
            for t in self.tokens()? {
                let info = t.info.unwrap_or_default();
                if info.user == req.name {
                    keys.push(token_key(&info.id));
                }
            }
            let ops: Vec<Op<'_>> = keys.iter().map(|k| Op::DeleteIam(k)).collect();
            self.iam().store().apply(&ops).map_err(IamError::from)?;
            Ok(u.user.unwrap_or_default())
        })();
        self.finish(call, res)
    }

    async fn enroll_totp(&self, r: Request<pb::EnrollTotpRequest>) -> R<pb::EnrollTotpResponse> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let who = self_or(&p.user, &req.user);
        let call = Call::new(&p, "IamService/EnrollTotp", &req.request_id, who);
        let res = (|| {
            let mut u = self.target(&p, &req.user)?;
            let secret = users::random::<20>()?;
            u.totp_pending = secret.to_vec();
            users::put(self.iam().store(), &u)?;
            Ok(users::enrolment(u.name(), &secret))
        })();
        self.finish(call, res)
    }

    async fn confirm_totp(&self, r: Request<pb::ConfirmTotpRequest>) -> R<pb::User> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let who = self_or(&p.user, &req.user);
        let call = Call::new(&p, "IamService/ConfirmTotp", &req.request_id, who);
        let res = (|| {
            let mut u = self.target(&p, &req.user)?;
            if u.totp_pending.is_empty() {
                return Err(Status::failed_precondition(
                    "no TOTP enrolment in progress: call EnrollTotp first",
                ));
            }
            let now_s = now_ms().max(0) as u64 / 1000;
            let Some(step) = users::check_totp(&u.totp_pending, &req.code, now_s, 0)? else {
                return Err(Status::invalid_argument(
                    "the code does not match the enrolled secret (check the device's clock)",
                ));
            };
            u.totp_secret = std::mem::take(&mut u.totp_pending);
            u.totp_last_step = step;
            if let Some(x) = u.user.as_mut() {
                x.totp_enabled = true;
            }
            users::put(self.iam().store(), &u)?;
            Ok(u.user.unwrap_or_default())
        })();
        self.finish(call, res)
    }

    async fn create_project(&self, r: Request<pb::CreateProjectRequest>) -> R<pb::Project> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let call = Call::new(&p, "IamService/CreateProject", &req.request_id, &req.name);
        let mut call = call;
        call.project(&req.name);
        let res = (|| {
            admin_only(&p)?;
            check_name("project", &req.name)?;
            if self.iam().project(&req.name)?.is_some() {
                return Err(Status::already_exists(format!(
                    "project {} already exists",
                    req.name
                )));
            }
            let proj = pb::Project {
                name: req.name.clone(),
                description: req.description.clone(),
                quota: req.quota,
                created_at_ms: now_ms(),
            };
            let key = project_key(&req.name);
            self.iam()
                .store()
                .apply(&[Op::PutIam(&key, proj.encode_to_vec())])
                .map_err(IamError::from)?;
            Ok(proj)
        })();
        self.finish(call, res)
    }

    async fn list_projects(
        &self,
        r: Request<pb::ListProjectsRequest>,
    ) -> R<pb::ListProjectsResponse> {
        let p = principal(&r)?;
        let projects = self
            .iam()
            .projects()?
            .into_iter()
            .filter(|x| p.sees(&x.name))
            .collect();
        Ok(Response::new(pb::ListProjectsResponse { projects }))
    }

    async fn delete_project(&self, r: Request<pb::DeleteProjectRequest>) -> R<pb::Project> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let mut call = Call::new(&p, "IamService/DeleteProject", &req.request_id, &req.name);
        call.project(&req.name);
        let res = (|| {
            self.iam().check_project(&p, Action::Admin, &req.name)?;
            if req.name == super::DEFAULT_PROJECT {
                return Err(Status::failed_precondition(
                    "the default project cannot be deleted",
                ));
            }
            let proj = self
                .iam()
                .project(&req.name)?
                .ok_or_else(|| Status::not_found(project_not_found(&req.name)))?;
            let mut keys = vec![project_key(&req.name)];
            for m in self.iam().members(Some(&req.name))? {
                keys.push(member_key(&m.project, &m.user));
            }
            for t in self.tokens()? {
                let info = t.info.unwrap_or_default();
                if info.project == req.name {
                    keys.push(token_key(&info.id));
                }
            }
            let ops: Vec<Op<'_>> = keys.iter().map(|k| Op::DeleteIam(k)).collect();
            // Checked and deleted under the state mutex: no create lands in it meanwhile.
            self.0.with_state_lock(|st| {
                let used = super::quotas::usage(st.vms.values(), &req.name);
                if used.vms > 0 {
                    return Err(Status::failed_precondition(format!(
                        "project {} still has {} VMs: delete them first",
                        req.name, used.vms
                    )));
                }
                self.iam().store().apply(&ops).map_err(IamError::from)?;
                Ok(())
            })?;
            Ok(proj)
        })();
        self.finish(call, res)
    }

    async fn add_member(&self, r: Request<pb::AddMemberRequest>) -> R<pb::Member> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let object = format!("{}/{}", req.project, req.user);
        let mut call = Call::new(&p, "IamService/AddMember", &req.request_id, &object);
        call.project(&req.project);
        let res = (|| {
            self.iam().check_project(&p, Action::Manage, &req.project)?;
            let role = role_arg(req.role)?;
            self.user(&req.user)?;
            let m = pb::Member {
                project: req.project.clone(),
                user: req.user.clone(),
                role: role.to_pb() as i32,
            };
            let key = member_key(&req.project, &req.user);
            self.iam()
                .store()
                .apply(&[Op::PutIam(&key, m.encode_to_vec())])
                .map_err(IamError::from)?;
            Ok(m)
        })();
        self.finish(call, res)
    }

    async fn remove_member(&self, r: Request<pb::RemoveMemberRequest>) -> R<pb::Member> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let object = format!("{}/{}", req.project, req.user);
        let mut call = Call::new(&p, "IamService/RemoveMember", &req.request_id, &object);
        call.project(&req.project);
        let res = (|| {
            self.iam().check_project(&p, Action::Manage, &req.project)?;
            let key = member_key(&req.project, &req.user);
            let m: pb::Member = match self
                .iam()
                .store()
                .iam_record(&key)
                .map_err(IamError::from)?
            {
                Some(b) => decode(&key, &b)?,
                None => {
                    return Err(Status::not_found(format!(
                        "user {} is not a member of project {}",
                        req.user, req.project
                    )))
                }
            };
            self.iam()
                .store()
                .apply(&[Op::DeleteIam(&key)])
                .map_err(IamError::from)?;
            Ok(m)
        })();
        self.finish(call, res)
    }

    async fn list_members(&self, r: Request<pb::ListMembersRequest>) -> R<pb::ListMembersResponse> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let project = requested_project(&req.project);
        self.iam().check_project(&p, Action::Read, project)?;
        let members = self.iam().members(Some(project))?;
        Ok(Response::new(pb::ListMembersResponse { members }))
    }

    async fn set_quota(&self, r: Request<pb::SetQuotaRequest>) -> R<pb::QuotaResponse> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let project = requested_project(&req.project).to_string();
        let mut call = Call::new(&p, "IamService/SetQuota", &req.request_id, &project);
        call.project(&project);
        let res = (|| {
            self.iam().check_project(&p, Action::Admin, &project)?;
            let mut proj = self
                .iam()
                .project(&project)?
                .ok_or_else(|| Status::not_found(project_not_found(&project)))?;
            proj.quota = req.quota;
            let key = project_key(&project);
            // Under the state mutex: a create deciding meanwhile sees the old or the new
            // quota, never half of one.
            self.0
                .with_state_lock(|_| {
                    self.iam()
                        .store()
                        .apply(&[Op::PutIam(&key, proj.encode_to_vec())])
                })
                .map_err(IamError::from)?;
            Ok(pb::QuotaResponse {
                project: project.clone(),
                quota: proj.quota,
                usage: Some(self.usage(&project)),
            })
        })();
        self.finish(call, res)
    }

    async fn get_quota(&self, r: Request<pb::GetQuotaRequest>) -> R<pb::QuotaResponse> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let project = requested_project(&req.project);
        self.iam().check_project(&p, Action::Read, project)?;
        Ok(Response::new(pb::QuotaResponse {
            project: project.to_string(),
            quota: Some(self.iam().quota(project)?),
            usage: Some(self.usage(project)),
        }))
    }

    async fn create_api_token(
        &self,
        r: Request<pb::CreateApiTokenRequest>,
    ) -> R<pb::CreateApiTokenResponse> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let admin_token = req.role == pb::Role::Admin as i32;
        let project = if admin_token {
            String::new()
        } else {
            requested_project(&req.project).to_string()
        };
        let mut call = Call::new(&p, "IamService/CreateApiToken", &req.request_id, "");
        call.project(&project);
        let res = (|| {
            if admin_token {
                if !req.project.is_empty() {
                    return Err(Status::invalid_argument(
                        "an admin token has no project: leave the project empty",
                    ));
                }
                admin_only(&p)?;
            } else {
                self.iam().check_project(&p, Action::Read, &project)?;
                let role = role_arg(req.role)?;
                let mine = p.role_in(&project).unwrap_or(Role::Viewer);
                if role > mine {
                    return Err(Status::permission_denied(format!(
                        "{} is {} in project {project}: a token cannot be {}",
                        p.user,
                        mine.name(),
                        role.name()
                    )));
                }
            }
            let (info, token) = tokens::mint(
                self.iam().store(),
                &p.user,
                &project,
                req.role,
                &req.description,
                req.ttl_seconds,
            )?;
            Ok(pb::CreateApiTokenResponse {
                info: Some(info),
                token,
            })
        })();
        if let Ok(t) = &res {
            call.object(&t.info.as_ref().map(|i| i.id.clone()).unwrap_or_default());
        }
        self.finish(call, res)
    }

    async fn list_api_tokens(
        &self,
        r: Request<pb::ListApiTokensRequest>,
    ) -> R<pb::ListApiTokensResponse> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let tokens = self
            .tokens()?
            .into_iter()
            .filter_map(|t| t.info)
            .filter(|t| {
                if p.is_admin() {
                    req.user.is_empty() || t.user == req.user
                } else {
                    t.user == p.user
                }
            })
            .collect();
        Ok(Response::new(pb::ListApiTokensResponse { tokens }))
    }

    async fn revoke_api_token(&self, r: Request<pb::RevokeApiTokenRequest>) -> R<pb::ApiToken> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let mut call = Call::new(&p, "IamService/RevokeApiToken", &req.request_id, &req.id);
        let res = (|| {
            let key = token_key(&req.id);
            let missing = || Status::not_found(format!("API token {} not found", req.id));
            let mut rec: TokenRecord = match self
                .iam()
                .store()
                .iam_record(&key)
                .map_err(IamError::from)?
            {
                Some(b) => decode(&key, &b)?,
                None => return Err(missing()),
            };
            let mut info = rec.info.clone().unwrap_or_default();
            call.project(&info.project);
            if info.user != p.user && !p.is_admin() {
                return Err(missing());
            }
            info.revoked = true;
            rec.info = Some(info.clone());
            self.iam()
                .store()
                .apply(&[Op::PutIam(&key, rec.encode_to_vec())])
                .map_err(IamError::from)?;
            Ok(info)
        })();
        self.finish(call, res)
    }

    async fn list_audit(&self, r: Request<pb::ListAuditRequest>) -> R<pb::ListAuditResponse> {
        let p = principal(&r)?;
        let req = r.into_inner();
        let project = if req.project.is_empty() {
            admin_only(&p).map_err(|_| {
                Status::permission_denied(
                    "only admins read the whole audit log: name a project you own",
                )
            })?;
            None
        } else {
            check_scope(&p, &req.project)?;
            self.iam().check_project(&p, Action::Manage, &req.project)?;
            Some(req.project.as_str())
        };
        let records = audit::list(
            self.iam().store(),
            project,
            req.since_ms,
            req.limit as usize,
        )
        .map_err(IamError::from)?;
        Ok(Response::new(pb::ListAuditResponse { records }))
    }
}

/// The user a self-service call names: `named`, or the caller when it names none.
fn self_or<'a>(caller: &'a str, named: &'a str) -> &'a str {
    if named.is_empty() {
        caller
    } else {
        named
    }
}
