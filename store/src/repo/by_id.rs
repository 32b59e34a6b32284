//! [`ById`]: cached reads of one kind of entity by id — the part the users and sessions
//! decorators share (the cache key of an id, encode on load, decode on a hit, a value that does
//! not decode read from the database instead).

use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{decode_cached, encode_cached};
use crate::Result;
use crate::cache::Cache;

/// The database read of one entity by id.
type Read<T> = Arc<dyn Fn(String) -> BoxFuture<'static, Result<Option<T>>> + Send + Sync>;

/// Cached reads by id: `key(id)` is the entry, `read(id)` the database read.
pub(crate) struct ById<T> {
    cache: Cache,
    key: fn(&str) -> String,
    read: Read<T>,
}

impl<T: Serialize + DeserializeOwned + Send + 'static> ById<T> {
    pub(crate) fn new<F>(
        cache: Cache,
        key: fn(&str) -> String,
        read: impl Fn(String) -> F + Send + Sync + 'static,
    ) -> ById<T>
    where
        F: Future<Output = Result<Option<T>>> + Send + 'static,
    {
        ById {
            cache,
            key,
            read: Arc::new(move |id| read(id).boxed()),
        }
    }

    pub(crate) fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The load of `id` for the cache (it may call it twice: see [`Cache::get`]).
    fn load(
        &self,
        id: &str,
    ) -> impl Fn() -> BoxFuture<'static, Result<Option<Vec<u8>>>> + Send + Sync + 'static {
        let (read, id) = (self.read.clone(), id.to_owned());
        move || {
            let read = read(id.clone());
            async move { encode_cached(read.await?.as_ref()) }.boxed()
        }
    }

    async fn decode_or_read(&self, id: &str, cached: Option<Vec<u8>>) -> Result<Option<T>> {
        let Some(bytes) = cached else { return Ok(None) };
        match decode_cached(&bytes) {
            Some(value) => Ok(Some(value)),
            None => (self.read)(id.to_owned()).await,
        }
    }

    /// The entity `id`, from the cache or read and cached.
    pub(crate) async fn get(&self, id: &str) -> Result<Option<T>> {
        let cached = self.cache.get((self.key)(id), self.load(id)).await?;
        self.decode_or_read(id, cached).await
    }

    /// The entities of `ids` (result `i` is id `i`'s): hits in one round trip, misses loaded.
    pub(crate) async fn get_many(&self, ids: &[String]) -> Result<Vec<Option<T>>> {
        let (read, owned) = (self.read.clone(), Arc::new(ids.to_vec()));
        let load = move |i: usize| {
            let read = read(owned[i].clone());
            async move { encode_cached(read.await?.as_ref()) }
        };
        let keys = ids.iter().map(|id| (self.key)(id)).collect();
        let cached = self.cache.get_many(keys, load).await?;
        let mut out = Vec::with_capacity(cached.len());
        for (id, c) in ids.iter().zip(cached) {
            out.push(self.decode_or_read(id, c).await?);
        }
        Ok(out)
    }
}
