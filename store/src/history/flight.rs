//! Single-flight: identical concurrent requests (same session, same call, same arguments) run
//! once; the others await the first one's shared future (see "Single-flight" in [`super`]).

use super::Page;

/// One request as the single-flight map keys it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Request {
    Latest(usize),
    Before(i64, usize),
    After(i64, usize),
    Get(Vec<i64>),
}

impl Request {
    pub(super) fn op(&self) -> &'static str {
        match self {
            Request::Latest(_) => "latest",
            Request::Before(..) => "before",
            Request::After(..) => "after",
            Request::Get(_) => "get",
        }
    }
}

/// The page reads in flight, keyed by session and request.
pub(super) type Flights = crate::flight::Flights<(String, Request), Page>;
