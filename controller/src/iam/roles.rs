//! Roles and the one authorization policy. [`authorize`] is pure: given who calls
//! ([`Principal`], resolved from the token by `authn`), what the call does ([`Action`]) and
//! the object's project (and creator), it allows, or refuses as NOT_FOUND (the caller cannot
//! see the project: the same answer as a missing object) or PERMISSION_DENIED (visible, not
//! allowed).
//!
//! | action | admin | owner | operator | viewer | non-member |
//! |---|---|---|---|---|---|
//! | `Read` (get, list, watch, quota) | yes | yes | yes | yes | NOT_FOUND |
//! | `Operate` (create, start, stop, reboot, migrate, cancel, snapshot, restore, clone, template) | yes | yes | yes | DENIED | NOT_FOUND |
//! | `Delete` (VMs, snapshots) | yes | yes | its own | DENIED | NOT_FOUND |
//! | `Manage` (members, export, the project's audit log) | yes | yes | DENIED | DENIED | NOT_FOUND |
//! | `Admin` (hosts, users, projects, quotas, imports) | yes | DENIED | DENIED | DENIED | NOT_FOUND / DENIED |
//!
//! An API token is scoped to one project and role: the caller then sees only that project,
//! with at most that role (and at most the user's current role there).

use std::collections::BTreeMap;

use novacron_proto::controller as pb;

/// A project role, ordered by what it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read only.
    Viewer,
    /// Lifecycle, migration, snapshots and clones; deletes only its own objects.
    Operator,
    /// Everything in the project, membership included.
    Owner,
}

impl Role {
    /// From the protobuf enum (`None` for unspecified and admin).
    pub fn from_pb(r: i32) -> Option<Role> {
        match pb::Role::try_from(r).ok()? {
            pb::Role::Viewer => Some(Role::Viewer),
            pb::Role::Operator => Some(Role::Operator),
            pb::Role::Owner => Some(Role::Owner),
            pb::Role::Unspecified | pb::Role::Admin => None,
        }
    }

    /// To the protobuf enum.
    pub fn to_pb(self) -> pb::Role {
        match self {
            Role::Viewer => pb::Role::Viewer,
            Role::Operator => pb::Role::Operator,
            Role::Owner => pb::Role::Owner,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Owner => "owner",
        }
    }
}

/// What an API token limits its caller to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// An admin token (only admins have them).
    Admin,
    /// One project, at most this role.
    Project(String, Role),
}

/// Who makes a call: resolved from its token for each call (so removing a member or a user
/// takes effect at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// User name.
    pub user: String,
    /// The user is an admin.
    pub admin: bool,
    /// The API token used (`None`: a session token).
    pub token: Option<String>,
    /// The token's scope (`None`: a session token, the user's full rights).
    pub scope: Option<Scope>,
    /// The user's project roles.
    pub roles: BTreeMap<String, Role>,
}

/// The caller's level in a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Role(Role),
    Admin,
}

impl Principal {
    /// The admin a development controller (`--insecure-dev`) assumes for calls without a
    /// token.
    pub fn insecure_dev() -> Self {
        Principal {
            user: "insecure-dev".into(),
            admin: true,
            token: None,
            scope: None,
            roles: BTreeMap::new(),
        }
    }

    /// Whether the caller has admin rights (an admin user, not limited by a project token).
    pub fn is_admin(&self) -> bool {
        self.admin && matches!(self.scope, None | Some(Scope::Admin))
    }

    /// What the audit log calls the caller: the user, and the token when one was used.
    pub fn audit_name(&self) -> String {
        match &self.token {
            Some(t) => format!("{} token:{t}", self.user),
            None => self.user.clone(),
        }
    }

    /// The project an API token is limited to.
    pub fn scoped_project(&self) -> Option<&str> {
        match &self.scope {
            Some(Scope::Project(p, _)) => Some(p),
            _ => None,
        }
    }

    fn level(&self, project: &str) -> Option<Level> {
        if self.is_admin() {
            return Some(Level::Admin);
        }
        let own = if self.admin {
            Some(Role::Owner)
        } else {
            self.roles.get(project).copied()
        };
        match &self.scope {
            Some(Scope::Project(p, r)) if p == project => own.map(|o| Level::Role(o.min(*r))),
            Some(Scope::Project(..)) => None,
            _ => own.map(Level::Role),
        }
    }

    /// The caller's role in `project` (admins: owner), `None` when it cannot see it.
    pub fn role_in(&self, project: &str) -> Option<Role> {
        self.level(project).map(|l| match l {
            Level::Role(r) => r,
            Level::Admin => Role::Owner,
        })
    }

    /// Whether the caller sees `project`.
    pub fn sees(&self, project: &str) -> bool {
        self.level(project).is_some()
    }

    /// The project of a new object whose request names none: the API token's project;
    /// else `default` when the caller sees it; else the caller's only project; else
    /// `default` (which then answers NOT_FOUND).
    pub fn default_project(&self) -> String {
        if let Some(p) = self.scoped_project() {
            return p.to_string();
        }
        if !self.sees(super::DEFAULT_PROJECT) && self.roles.len() == 1 {
            if let Some(p) = self.roles.keys().next() {
                return p.clone();
            }
        }
        super::DEFAULT_PROJECT.to_string()
    }
}

/// What a call does to its object, for [`authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Get, list, watch.
    Read,
    /// Lifecycle and migration, snapshots, restores, clones, templates.
    Operate,
    /// Delete an object (operators: only what they created).
    Delete,
    /// Membership, exports, the project's audit log.
    Manage,
    /// Hosts, users, projects, quotas, imports.
    Admin,
}

/// The object of a call: its project and who created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object<'a> {
    /// Project.
    pub project: &'a str,
    /// Creator (empty: unknown).
    pub created_by: &'a str,
}

impl<'a> Object<'a> {
    /// An object of `project` whose creator does not matter.
    pub fn project(project: &'a str) -> Self {
        Object {
            project,
            created_by: "",
        }
    }
}

/// Why [`authorize`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The caller cannot see the object's project: answer as if the object did not exist.
    NotFound,
    /// Visible, but the caller's role does not allow the action (the reason).
    Denied(String),
}

/// The policy (see the module documentation). `object` is `None` for calls about no
/// project (hosts, users, projects as a whole).
pub fn authorize(p: &Principal, action: Action, object: Option<Object<'_>>) -> Result<(), Refusal> {
    let Some(obj) = object else {
        return if p.is_admin() {
            Ok(())
        } else {
            Err(Refusal::Denied("only admins may do this".into()))
        };
    };
    let Some(level) = p.level(obj.project) else {
        return Err(Refusal::NotFound);
    };
    let role = match level {
        Level::Admin => return Ok(()),
        Level::Role(r) => r,
    };
    let denied = |need: &str| {
        Err(Refusal::Denied(format!(
            "{} is {} in project {}: {need}",
            p.user,
            role.name(),
            obj.project
        )))
    };
    match action {
        Action::Read => Ok(()),
        Action::Operate if role >= Role::Operator => Ok(()),
        Action::Operate => denied("this needs operator or owner"),
        Action::Delete if role == Role::Owner => Ok(()),
        Action::Delete if role == Role::Operator && obj.created_by == p.user => Ok(()),
        Action::Delete if role == Role::Operator => {
            denied("operators may delete only what they created")
        }
        Action::Delete => denied("this needs owner (or operator, for what it created)"),
        Action::Manage if role == Role::Owner => Ok(()),
        Action::Manage => denied("this needs owner"),
        Action::Admin => denied("only admins may do this"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(roles: &[(&str, Role)]) -> Principal {
        Principal {
            user: "u".into(),
            admin: false,
            token: None,
            scope: None,
            roles: roles.iter().map(|(p, r)| (p.to_string(), *r)).collect(),
        }
    }

    #[test]
    fn policy_table() {
        use Action::*;
        let obj = |created_by| Object {
            project: "p",
            created_by,
        };
        let admin = Principal {
            admin: true,
            ..user(&[])
        };
        for a in [Read, Operate, Delete, Manage, Admin] {
            assert_eq!(authorize(&admin, a, Some(obj(""))), Ok(()));
            assert_eq!(
                authorize(&user(&[]), a, Some(obj(""))),
                Err(Refusal::NotFound)
            );
            // Another project's member sees nothing of p either.
            let other = user(&[("q", Role::Owner)]);
            assert_eq!(authorize(&other, a, Some(obj(""))), Err(Refusal::NotFound));
        }
        assert_eq!(authorize(&admin, Admin, None), Ok(()));
        let owner = user(&[("p", Role::Owner)]);
        let op = user(&[("p", Role::Operator)]);
        let viewer = user(&[("p", Role::Viewer)]);
        assert!(matches!(
            authorize(&owner, Admin, None),
            Err(Refusal::Denied(_))
        ));
        let allowed = |p: &Principal, a, by| authorize(p, a, Some(obj(by))).is_ok();
        assert!(allowed(&owner, Manage, "") && allowed(&owner, Delete, "x"));
        assert!(!allowed(&owner, Admin, ""));
        assert!(allowed(&op, Operate, "") && allowed(&op, Delete, "u"));
        assert!(
            !allowed(&op, Delete, "x") && !allowed(&op, Delete, "") && !allowed(&op, Manage, "")
        );
        assert!(allowed(&viewer, Read, ""));
        assert!(!allowed(&viewer, Operate, "") && !allowed(&viewer, Delete, "u"));
    }

    #[test]
    fn tokens_narrow_what_a_user_may_do() {
        let mut owner = user(&[("p", Role::Owner), ("q", Role::Owner)]);
        owner.scope = Some(Scope::Project("p".into(), Role::Viewer));
        assert_eq!(owner.role_in("p"), Some(Role::Viewer));
        assert!(!owner.sees("q"));
        // Never more than the user has now.
        let mut viewer = user(&[("p", Role::Viewer)]);
        viewer.scope = Some(Scope::Project("p".into(), Role::Owner));
        assert_eq!(viewer.role_in("p"), Some(Role::Viewer));
        // An admin with a project token is that project's owner at most, nothing else.
        let mut admin = Principal {
            admin: true,
            ..user(&[])
        };
        admin.scope = Some(Scope::Project("p".into(), Role::Operator));
        assert!(!admin.is_admin());
        assert_eq!(admin.role_in("p"), Some(Role::Operator));
        assert!(!admin.sees("q"));
        admin.scope = Some(Scope::Admin);
        assert!(admin.is_admin());
    }

    #[test]
    fn new_objects_default_to_the_callers_project() {
        assert_eq!(user(&[("p", Role::Operator)]).default_project(), "p");
        assert_eq!(
            user(&[("p", Role::Owner), ("q", Role::Owner)]).default_project(),
            "default"
        );
        assert_eq!(
            user(&[("p", Role::Owner), ("default", Role::Viewer)]).default_project(),
            "default"
        );
        let mut t = user(&[("p", Role::Owner), ("q", Role::Owner)]);
        t.scope = Some(Scope::Project("q".into(), Role::Viewer));
        assert_eq!(t.default_project(), "q");
    }
}
