//! Page tokens bound to the list that issued them (AIP-158): a token from
//! another workspace's ListCycles, from ListWorkspaces, or from the same
//! list with another filter is refused with `INVALID_ARGUMENT`, instead of
//! silently paging from a position that means something else there.
//! No contract of its own: the API's paging.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tonic::Status;

use super::status::invalid_field;
use crate::domain::WorkspaceId;

/// The list (and filter) a token pages through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Listing {
    /// ListWorkspaces, with or without deleted workspaces.
    Workspaces {
        /// The request's `include_deleted`.
        include_deleted: bool,
    },
    /// ListCycles of one workspace.
    Cycles(WorkspaceId),
}

impl Listing {
    fn scope(self) -> String {
        match self {
            Self::Workspaces {
                include_deleted: false,
            } => "workspaces".into(),
            Self::Workspaces {
                include_deleted: true,
            } => "workspaces+deleted".into(),
            Self::Cycles(workspace) => format!("cycles:{workspace}"),
        }
    }

    /// The token for the page after position `next` (empty: no more).
    pub(super) fn token(self, next: Option<i64>) -> String {
        next.map(|n| URL_SAFE_NO_PAD.encode(format!("{}/{n}", self.scope())))
            .unwrap_or_default()
    }

    /// The position `raw` (a token this list issued) stands for; 0 for the
    /// first page.
    pub(super) fn position(self, raw: &str) -> Result<i64, Status> {
        if raw.is_empty() {
            return Ok(0);
        }
        URL_SAFE_NO_PAD
            .decode(raw)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| {
                let (scope, n) = text.rsplit_once('/')?;
                (scope == self.scope()).then(|| n.parse::<i64>().ok())?
            })
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                invalid_field(
                    "page_token",
                    "page_token is not one this list issued (a token pages only the list, workspace and filter it came from)",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_pages_only_the_list_that_issued_it() {
        let (a, b) = (WorkspaceId::new(), WorkspaceId::new());
        let cycles_a = Listing::Cycles(a);
        let token = cycles_a.token(Some(36));
        assert_eq!(cycles_a.position(&token).unwrap(), 36);
        assert_eq!(cycles_a.position("").unwrap(), 0);
        assert_eq!(cycles_a.token(None), "");
        for other in [
            Listing::Cycles(b),
            Listing::Workspaces {
                include_deleted: false,
            },
        ] {
            let err = other.position(&token).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
        let all = Listing::Workspaces {
            include_deleted: true,
        };
        let live = Listing::Workspaces {
            include_deleted: false,
        };
        assert!(
            live.position(&all.token(Some(3))).is_err(),
            "another filter"
        );
        for forged in [
            "36",
            "abc",
            "-5",
            "0",
            &URL_SAFE_NO_PAD.encode("cycles:x/1"),
        ] {
            assert!(cycles_a.position(forged).is_err(), "{forged}");
        }
    }
}
