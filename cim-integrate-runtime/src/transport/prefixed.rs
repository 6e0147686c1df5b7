//! [`Prefixed`]: the deployment prefix as a property of the transport.
//!
//! Several deployments (`prod`, `staging`, `prod.eu`) can share one NATS account when each lives
//! under its own subject prefix. Rather than every builder, bus and engine threading the prefix
//! by hand, the transport is wrapped once and everything above it speaks unprefixed names:
//!
//! ```
//! # async fn demo() -> Result<(), cim_integrate_runtime::transport::TransportError> {
//! use cim_integrate_runtime::subject;
//! use cim_integrate_runtime::transport::memory::MemoryTransport;
//! use cim_integrate_runtime::transport::{Prefixed, StreamSpec, Transport};
//!
//! let raw = MemoryTransport::new();
//! let prod = Prefixed::new(raw.clone(), Some(subject!("prod")));
//! // `DOCUMENT_EVENTS` on `document.>` is created as `PROD_DOCUMENT_EVENTS` on `prod.document.>`.
//! prod.ensure_stream(&StreamSpec::for_domain("document", None)?).await?;
//! # Ok(()) }
//! ```
//!
//! # The rule
//!
//! The decorator owns prefixing: callers always pass unprefixed specs and subjects, and always
//! see unprefixed ones. Wrapping a transport that is already prefixed nests the prefixes; never
//! prefix a name by hand as well.
//!
//! | what | on the way out (`prod.eu`) | on the way in |
//! | --- | --- | --- |
//! | publish subject | `document.created` -> `prod.eu.document.created` | |
//! | stream name | `DOCUMENT_EVENTS` -> `PROD_EU_DOCUMENT_EVENTS` ([`prefixed_name`]) | [`PublishAck::stream`], [`DeliveryInfo::stream`](super::DeliveryInfo::stream) stripped |
//! | stream subjects | `document.>` -> `prod.eu.document.>` | |
//! | consumer filter | `document.*` -> `prod.eu.document.*` (durable names unchanged: streams are per prefix) | delivery subject stripped |
//! | key-value bucket | `state` -> `prod_eu_state` ([`Prefixed::bucket_name`]) | |
//! | request subject | `commands.document.create` -> `prod.eu.commands.document.create` | request subject stripped |
//! | serve pattern, queue group | `commands.document.>`, `document` -> `prod.eu.commands.document.>`, `prod_eu_document` | [`Responder::pattern`]/[`Responder::group`] unprefixed |
//!
//! Specs are validated as given (a stream's subjects must not start with a wildcard, names are
//! `[A-Za-z0-9_-]+`) before they are prefixed, so a spec is accepted or refused the same with
//! and without a prefix. Errors name what the caller named: a [`TransportError::NoStream`] for
//! `prod.eu.person.created` says `person.created`, a [`TransportError::StreamConflict`] on
//! `PROD_EU_DOCUMENT_EVENTS` says `DOCUMENT_EVENTS` ([`Prefixed::stream_name`],
//! [`Prefixed::bucket_name`] and [`Prefixed::subject`] give the names on the server).
//!
//! A delivery or request whose subject lies outside the prefix cannot arrive through a prefixed
//! filter; if one does anyway it is passed on unchanged (with a warning), never a panic.
//!
//! `Prefixed::new(inner, None)` is a pass-through: every call goes straight to `inner`.

use super::{
    Acker, Consumer, ConsumerSpec, Delivery, IncomingRequest, KvError, KvSpec, OutboundMessage, PublishAck, Reply,
    Request, Responder, StreamSpec, Transport, TransportError, prefixed_name,
};
use crate::subject::{Subject, SubjectError, SubjectPattern};
use futures::StreamExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A transport under a deployment prefix: prefixes subjects, streams, buckets and queue groups on
/// the way out and strips them on the way in, so the code above sees unprefixed names.
///
/// See the [module documentation](self) for the naming rules. Cheap to clone (the prefix is
/// shared).
///
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use cim_integrate_runtime::subject;
/// use cim_integrate_runtime::transport::memory::MemoryTransport;
/// use cim_integrate_runtime::transport::{Prefixed, StreamSpec, Transport};
///
/// let raw = MemoryTransport::new();
/// let prod = Prefixed::new(raw.clone(), Some(subject!("prod")));
/// prod.ensure_stream(&StreamSpec::for_domain("document", None)?).await?;
/// let env = cim_integrate_runtime::Envelope::root(subject!("document.created"), "{}");
/// let ack = prod.publish_and_wait(env.into()).await?;
/// assert_eq!(&*ack.stream, "DOCUMENT_EVENTS"); // as seen through the decorator
/// assert_eq!(prod.stream_name("DOCUMENT_EVENTS"), "PROD_DOCUMENT_EVENTS"); // on the server
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Prefixed<T> {
    inner: T,
    names: Option<Arc<Names>>,
}

/// The prefix in its three spellings.
#[derive(Debug)]
struct Names {
    /// `prod.eu`
    subject: Subject,
    /// `PROD_EU_`: stream names.
    stream: String,
    /// `prod_eu_`: bucket names and queue groups.
    name: String,
}

impl Names {
    fn new(subject: Subject) -> Self {
        let stream = prefixed_name(Some(&subject), "");
        let name = format!("{}_", subject.as_str().replace('.', "_"));
        Self { subject, stream, name }
    }

    fn subject(&self, s: &Subject) -> Result<Subject, TransportError> {
        s.with_prefix(&self.subject)
            .map_err(|e| invalid_subject(s.as_str(), &e))
    }

    fn pattern(&self, p: &SubjectPattern) -> Result<SubjectPattern, TransportError> {
        p.with_prefix(&self.subject)
            .map_err(|e| invalid_subject(p.as_str(), &e))
    }

    /// Removes `prod.eu.` from the front of a received subject; leaves a foreign one unchanged.
    fn strip_subject(&self, subject: &mut String) {
        let p = self.subject.as_str();
        if subject.len() > p.len() && subject.starts_with(p) && subject.as_bytes()[p.len()] == b'.' {
            subject.drain(..=p.len());
        } else {
            tracing::warn!(%subject, prefix = %self.subject, "received a subject outside the deployment prefix; passed on unchanged");
        }
    }

    /// A stream name without its `PROD_EU_` prefix; `None` for another one (left unchanged).
    fn unprefixed_stream<'a>(&self, stream: &'a str) -> Option<&'a str> {
        stream.strip_prefix(&*self.stream).filter(|rest| !rest.is_empty())
    }

    /// Removes `PROD_EU_` from the front of a stream name; leaves another one unchanged.
    fn strip_stream(&self, stream: &mut String) {
        if self.unprefixed_stream(stream).is_some() {
            stream.drain(..self.stream.len());
        }
    }

    /// [`strip_stream`](Self::strip_stream) of a shared name.
    fn strip_shared_stream(&self, stream: &mut Arc<str>) {
        if let Some(rest) = self.unprefixed_stream(stream) {
            *stream = Arc::from(rest);
        }
    }

    /// Removes `prod_eu_` from the front of a bucket name; leaves another one unchanged.
    fn strip_bucket(&self, bucket: &mut String) {
        if bucket.len() > self.name.len() && bucket.starts_with(&self.name) {
            bucket.drain(..self.name.len());
        }
    }

    /// Removes `prod.eu.` from the front of a subject in an error; leaves another one unchanged.
    fn strip_error_subject(&self, subject: &mut String) {
        let p = self.subject.as_str();
        if subject.len() > p.len() + 1 && subject.starts_with(p) && subject.as_bytes()[p.len()] == b'.' {
            subject.drain(..=p.len());
        }
    }

    /// The error with the caller's (unprefixed) names.
    fn error(&self, mut e: TransportError) -> TransportError {
        match &mut e {
            TransportError::NoStream { subject } | TransportError::NoResponders { subject } => {
                self.strip_error_subject(subject);
            }
            TransportError::StreamNotFound { stream }
            | TransportError::StreamConflict { stream, .. }
            | TransportError::ConsumerConflict { stream, .. }
            | TransportError::ConsumerNotFound { stream, .. } => self.strip_stream(stream),
            TransportError::StreamOverlap { stream, other, pattern } => {
                self.strip_stream(stream);
                self.strip_stream(other);
                self.strip_error_subject(pattern);
            }
            _ => {}
        }
        e
    }

    fn kv_error(&self, e: KvError) -> KvError {
        match e {
            KvError::BucketConflict { mut bucket, detail } => {
                self.strip_bucket(&mut bucket);
                KvError::BucketConflict { bucket, detail }
            }
            KvError::Transport(t) => KvError::Transport(self.error(t)),
            other => other,
        }
    }
}

fn invalid_subject(s: &str, e: &SubjectError) -> TransportError {
    TransportError::Invalid(format!("`{s}` under the deployment prefix: {e}"))
}

impl<T: Transport> Prefixed<T> {
    /// Wraps `inner` under `prefix` (`prod`, `prod.eu`); with `None`, a pass-through.
    pub fn new(inner: T, prefix: Option<Subject>) -> Self {
        Self {
            inner,
            names: prefix.map(|p| Arc::new(Names::new(p))),
        }
    }

    /// The deployment prefix, if any.
    pub fn prefix(&self) -> Option<&Subject> {
        self.names.as_ref().map(|n| &n.subject)
    }

    /// The wrapped transport, which sees the real (prefixed) names.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// Unwraps the transport.
    pub fn into_inner(self) -> T {
        self.inner
    }

    /// The real name of stream `base`: `DOCUMENT_EVENTS` -> `PROD_EU_DOCUMENT_EVENTS`.
    pub fn stream_name(&self, base: &str) -> String {
        prefixed_name(self.prefix(), base)
    }

    /// The real name of bucket or queue group `base`: `state` -> `prod_eu_state` (the prefix's
    /// dots become `_`, then `_`, then the name; case is kept).
    pub fn bucket_name(&self, base: &str) -> String {
        match &self.names {
            Some(n) => format!("{}{base}", n.name),
            None => base.to_owned(),
        }
    }

    /// The real subject of `subject`: `document.created` -> `prod.eu.document.created`.
    pub fn subject(&self, subject: &Subject) -> Result<Subject, TransportError> {
        match &self.names {
            Some(n) => n.subject(subject),
            None => Ok(subject.clone()),
        }
    }
}

/// The consumer of a [`Prefixed`] transport: strips the prefix from delivery subjects and from
/// the stream name in the delivery facts.
#[derive(Debug)]
pub struct PrefixedConsumer<C> {
    inner: C,
    names: Option<Arc<Names>>,
    /// The stream's unprefixed name, shared by every delivery.
    stream: Arc<str>,
}

impl<C: Consumer> Consumer for PrefixedConsumer<C> {
    type Acker = C::Acker;

    fn created(&self) -> Option<crate::timestamp::Timestamp> {
        self.inner.created()
    }

    fn in_process(&self) -> bool {
        self.inner.in_process()
    }

    async fn next(&mut self) -> Result<Delivery<C::Acker>, TransportError> {
        let delivery = self.inner.next().await?;
        let Some(names) = &self.names else {
            return Ok(delivery);
        };
        Ok(strip_delivery(delivery, names, &self.stream))
    }

    fn try_next(&mut self) -> Option<Result<Delivery<C::Acker>, TransportError>> {
        let ready = self.inner.try_next()?;
        Some(match &self.names {
            Some(names) => ready.map(|d| strip_delivery(d, names, &self.stream)),
            None => ready,
        })
    }
}

fn strip_delivery<A: Acker>(delivery: Delivery<A>, names: &Names, stream: &Arc<str>) -> Delivery<A> {
    delivery.reframed(|subject, info| {
        names.strip_subject(subject);
        info.stream = stream.clone();
    })
}

pin_project_lite::pin_project! {
    /// The publish acknowledgement of a [`Prefixed`] transport: the inner one, with the stream's
    /// unprefixed name.
    #[must_use = "a publish is confirmed only when its acknowledgement resolves"]
    #[derive(Debug)]
    pub struct PrefixedAckFuture<F> {
        #[pin]
        inner: F,
        names: Option<Arc<Names>>,
    }
}

impl<F: Future<Output = Result<PublishAck, TransportError>>> Future for PrefixedAckFuture<F> {
    type Output = Result<PublishAck, TransportError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(names) = this.names else {
            return this.inner.poll(cx);
        };
        this.inner.poll(cx).map(|result| match result {
            Ok(mut ack) => {
                names.strip_shared_stream(&mut ack.stream);
                Ok(ack)
            }
            Err(e) => Err(names.error(e)),
        })
    }
}

impl<T: Transport> Transport for Prefixed<T> {
    type Consumer = PrefixedConsumer<T::Consumer>;
    type KeyValue = T::KeyValue;
    type AckFuture = PrefixedAckFuture<T::AckFuture>;

    fn deployment(&self) -> &crate::transport::Deployment {
        self.inner.deployment()
    }

    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), TransportError> {
        let Some(names) = &self.names else {
            return self.inner.ensure_stream(spec).await;
        };
        // Overrides are named before the prefix (`DOCUMENT_EVENTS`, not `PROD_DOCUMENT_EVENTS`).
        let spec = &spec.deployed(self.inner.deployment());
        spec.validate()?;
        let subjects = spec
            .subjects
            .iter()
            .map(|p| names.pattern(p))
            .collect::<Result<Vec<_>, _>>()?;
        let real = StreamSpec {
            name: format!("{}{}", names.stream, spec.name),
            subjects,
            ..spec.clone()
        };
        self.inner.ensure_stream(&real).await.map_err(|e| names.error(e))
    }

    async fn publish(&self, mut message: OutboundMessage) -> Result<Self::AckFuture, TransportError> {
        let inner = match &self.names {
            None => self.inner.publish(message).await?,
            Some(names) => {
                message.subject = names.subject(&message.subject)?;
                self.inner.publish(message).await.map_err(|e| names.error(e))?
            }
        };
        Ok(PrefixedAckFuture {
            inner,
            names: self.names.clone(),
        })
    }

    async fn consumer(&self, spec: &ConsumerSpec) -> Result<Self::Consumer, TransportError> {
        let stream: Arc<str> = Arc::from(spec.stream.as_str());
        let inner = match &self.names {
            None => self.inner.consumer(spec).await?,
            Some(names) => {
                spec.validate()?;
                let real = ConsumerSpec {
                    stream: format!("{}{}", names.stream, spec.stream),
                    filter: names.pattern(&spec.filter)?,
                    ..spec.clone()
                };
                self.inner.consumer(&real).await.map_err(|e| names.error(e))?
            }
        };
        Ok(PrefixedConsumer {
            inner,
            names: self.names.clone(),
            stream,
        })
    }

    async fn delete_consumer(&self, stream: &str, durable: &str) -> Result<(), TransportError> {
        let Some(names) = &self.names else {
            return self.inner.delete_consumer(stream, durable).await;
        };
        self.inner
            .delete_consumer(&format!("{}{stream}", names.stream), durable)
            .await
            .map_err(|e| names.error(e))
    }

    async fn key_value(&self, spec: &KvSpec) -> Result<Self::KeyValue, KvError> {
        let Some(names) = &self.names else {
            return self.inner.key_value(spec).await;
        };
        let spec = &spec.deployed(self.inner.deployment());
        spec.validate()?;
        let real = KvSpec {
            bucket: format!("{}{}", names.name, spec.bucket),
            ..spec.clone()
        };
        self.inner.key_value(&real).await.map_err(|e| names.kv_error(e))
    }

    async fn flush(&self) -> Result<(), TransportError> {
        self.inner.flush().await
    }

    async fn request(&self, mut request: Request, timeout: Duration) -> Result<Reply, TransportError> {
        let Some(names) = &self.names else {
            return self.inner.request(request, timeout).await;
        };
        request.subject = names.subject(&request.subject)?;
        self.inner.request(request, timeout).await.map_err(|e| names.error(e))
    }

    async fn serve(&self, pattern: &SubjectPattern, queue_group: &str) -> Result<Responder, TransportError> {
        let Some(names) = &self.names else {
            return self.inner.serve(pattern, queue_group).await;
        };
        super::check_queue_group(queue_group)?;
        let responder = self
            .inner
            .serve(&names.pattern(pattern)?, &format!("{}{queue_group}", names.name))
            .await
            .map_err(|e| names.error(e))?;
        let names = names.clone();
        let requests = responder
            .into_requests()
            .map(move |request| {
                let (mut subject, headers, payload, reply) = request.into_parts();
                names.strip_subject(&mut subject);
                IncomingRequest::new(subject, headers, payload, reply)
            })
            .boxed();
        Ok(Responder::new(pattern.to_string(), queue_group.to_owned(), requests))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::subject;
    use crate::transport::memory::MemoryTransport;

    fn names(p: &str) -> Names {
        Names::new(Subject::new(p).expect("prefix"))
    }

    #[test]
    fn names_follow_one_rule() {
        let n = names("prod.eu-west");
        assert_eq!((n.stream.as_str(), n.name.as_str()), ("PROD_EU_WEST_", "prod_eu-west_"));
        let t = Prefixed::new(MemoryTransport::new(), Some(subject!("prod.eu")));
        assert_eq!(t.stream_name("DOCUMENT_EVENTS"), "PROD_EU_DOCUMENT_EVENTS");
        assert_eq!(t.bucket_name("state"), "prod_eu_state");
        assert_eq!(
            t.subject(&subject!("document.created")).expect("subject").as_str(),
            "prod.eu.document.created"
        );
        let plain = Prefixed::new(MemoryTransport::new(), None);
        assert_eq!(plain.stream_name("DOCUMENT_EVENTS"), "DOCUMENT_EVENTS");
        assert_eq!(plain.bucket_name("state"), "state");
        assert_eq!(plain.prefix(), None);
    }

    #[test]
    fn stripping_is_exact_and_never_panics() {
        let n = names("prod");
        for (received, seen) in [
            ("prod.document.created", "document.created"),
            ("production.document.created", "production.document.created"),
            ("prod", "prod"),
            ("prod.", ""),
            ("other.subject", "other.subject"),
            ("", ""),
            ("pr", "pr"),
        ] {
            let mut s = received.to_owned();
            n.strip_subject(&mut s);
            assert_eq!(s, seen, "{received}");
        }
        for (received, seen) in [
            ("PROD_DOCUMENT_EVENTS", "DOCUMENT_EVENTS"),
            ("PROD_", "PROD_"),
            ("OTHER_EVENTS", "OTHER_EVENTS"),
        ] {
            let mut s = received.to_owned();
            n.strip_stream(&mut s);
            assert_eq!(s, seen, "{received}");
        }
    }

    #[test]
    fn errors_name_what_the_caller_named() {
        let n = names("prod");
        let e = n.error(TransportError::NoStream {
            subject: "prod.person.created".into(),
        });
        assert_eq!(
            e,
            TransportError::NoStream {
                subject: "person.created".into()
            }
        );
        let e = n.error(TransportError::StreamOverlap {
            stream: "PROD_CREATED".into(),
            other: "STAGING_DOCUMENT_EVENTS".into(),
            pattern: "prod.document.*.created".into(),
        });
        assert_eq!(
            e,
            TransportError::StreamOverlap {
                stream: "CREATED".into(),
                other: "STAGING_DOCUMENT_EVENTS".into(),
                pattern: "document.*.created".into(),
            }
        );
        let e = n.kv_error(KvError::BucketConflict {
            bucket: "prod_state".into(),
            detail: "history".into(),
        });
        assert!(
            matches!(e, KvError::BucketConflict { ref bucket, .. } if bucket == "state"),
            "{e:?}"
        );
        let e = n.error(TransportError::NoResponders { subject: "prod".into() });
        assert_eq!(e, TransportError::NoResponders { subject: "prod".into() });
    }

    #[test]
    fn a_too_long_prefixed_subject_is_an_error() {
        let t = Prefixed::new(MemoryTransport::new(), Some(subject!("prod")));
        let long = Subject::new("a".repeat(crate::subject::MAX_SUBJECT_LEN)).expect("longest subject");
        assert!(matches!(t.subject(&long), Err(TransportError::Invalid(_))));
    }

    /// A delivery whose subject lacks the prefix (a consumer opened on the raw transport, then
    /// wrapped) is passed on unchanged.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn delivery_outside_the_prefix_passes_unchanged() {
        let raw = MemoryTransport::new();
        raw.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
            .await
            .expect("stream");
        raw.publish_and_wait(Envelope::root(subject!("document.created"), "{}").into())
            .await
            .expect("publish");
        let spec = ConsumerSpec::new(
            "DOCUMENT_EVENTS",
            "reader",
            SubjectPattern::new("document.>").expect("p"),
        );
        let mut c = PrefixedConsumer {
            inner: raw.consumer(&spec).await.expect("consumer"),
            names: Some(Arc::new(names("prod"))),
            stream: Arc::from("DOCUMENT_EVENTS"),
        };
        let d = tokio::time::timeout(Duration::from_secs(5), c.next())
            .await
            .expect("in time")
            .expect("delivery");
        assert_eq!(d.subject(), "document.created");
        d.ack().await.expect("ack");
    }
}
