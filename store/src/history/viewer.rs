//! History as one user sees it: the same pages, minus the messages that user deleted for
//! themselves ([`crate::hidden`]), which are listed in [`Page::hidden`] instead.
//!
//! One extra CQL read per non-empty page, sized by the page (`seq IN` its messages' seqs), never
//! by how much the user hid. The shared page (window, coalescing) is read first, as for everyone;
//! only the filtering is per user. A page may so show fewer than `limit` messages: `next` still
//! continues where the unfiltered page ended.

use super::{History, Page};
use crate::Result;

/// [`History`] for one user: see the module docs. Made by [`History::viewer`].
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    history: &'a History,
    user_id: &'a str,
}

impl History {
    /// The history as `user_id` sees it: without the messages they deleted for themselves.
    pub fn viewer<'a>(&'a self, user_id: &'a str) -> Viewer<'a> {
        Viewer {
            history: self,
            user_id,
        }
    }
}

impl Viewer<'_> {
    /// [`History::latest`] for this user.
    pub async fn latest(&self, session_id: &str, n: usize) -> Result<Page> {
        let page = self.history.latest(session_id, n).await?;
        self.filter(session_id, page).await
    }

    /// [`History::before`] for this user.
    pub async fn before(&self, session_id: &str, before: i64, limit: usize) -> Result<Page> {
        let page = self.history.before(session_id, before, limit).await?;
        self.filter(session_id, page).await
    }

    /// [`History::after`] for this user.
    pub async fn after(&self, session_id: &str, after: i64, limit: usize) -> Result<Page> {
        let page = self.history.after(session_id, after, limit).await?;
        self.filter(session_id, page).await
    }

    /// [`History::get`] for this user.
    pub async fn get(&self, session_id: &str, seqs: &[i64]) -> Result<Page> {
        let page = self.history.get(session_id, seqs).await?;
        self.filter(session_id, page).await
    }

    async fn filter(&self, session_id: &str, mut page: Page) -> Result<Page> {
        let seqs = page.seqs();
        let hidden = self
            .history
            .hidden()
            .hidden_among(self.user_id, session_id, &seqs)
            .await?;
        if !hidden.is_empty() {
            page.messages
                .retain(|m| hidden.binary_search(&m.seq).is_err());
            page.hidden = hidden;
        }
        Ok(page)
    }
}
