//! Host operations of the user API: list, get, cordon and uncordon.

use novacron_proto::controller as pb;

use super::{page_bounds, Controller, ControllerError, Result};

impl Controller {
    /// A page of hosts ordered by name.
    pub fn list_hosts(&self, req: &pb::ListHostsRequest) -> Result<pb::ListHostsResponse> {
        let size = page_bounds(req.page_size);
        let st = self.state();
        let mut hosts = Vec::new();
        let mut next = String::new();
        for name in st.hosts.keys() {
            if !req.page_token.is_empty() && name.as_str() <= req.page_token.as_str() {
                continue;
            }
            if hosts.len() == size {
                next = hosts
                    .last()
                    .map(|h: &pb::Host| h.name.clone())
                    .unwrap_or_default();
                break;
            }
            hosts.push(st.host_view(name)?);
        }
        Ok(pb::ListHostsResponse {
            hosts,
            next_page_token: next,
            total: st.hosts.len() as u32,
        })
    }

    /// One host.
    pub fn get_host(&self, name: &str) -> Result<pb::Host> {
        if name.is_empty() {
            return Err(ControllerError::InvalidArgument(
                "host name is required".into(),
            ));
        }
        Ok(self.state().host_view(name)?)
    }

    /// Cordons or uncordons a host.
    pub async fn set_cordon(&self, req: pb::HostActionRequest, cordoned: bool) -> Result<pb::Host> {
        let method = if cordoned {
            "CordonHost"
        } else {
            "UncordonHost"
        };
        let name = req.host.clone();
        self.idempotent(&req.request_id, method, async {
            let h = {
                let mut st = self.state();
                let e = st.host(&name)?;
                let mut h = e.host.clone();
                let ready = e.ready();
                let changed = h.cordoned != cordoned;
                h.cordoned = cordoned;
                if !cordoned {
                    h.draining = false;
                }
                self.save_host(&mut st, h)?;
                st.sched.set_schedulable(&name, ready && !cordoned);
                let view = st.host_view(&name)?;
                (view, changed)
            };
            if h.1 {
                self.events.emit(
                    if cordoned {
                        "HostCordoned"
                    } else {
                        "HostUncordoned"
                    },
                    None,
                    &name,
                    "",
                );
            }
            Ok((h.0, name.clone()))
        })
        .await
    }
}
