//! Validation: the rules across arguments and item, into the checked view that `expand` needs.

use super::parse::{Args, PREVIOUS, SUBJECT, VERSION};
use crate::errors::Errors;
use crate::{subject, versioning};
use syn::{ItemStruct, LitStr, Path};

/// A checked `#[domain_event]`.
pub(crate) struct Event {
    /// The struct, unchanged.
    pub(crate) item: ItemStruct,
    /// This struct's version.
    pub(crate) version: LitStr,
    /// The current version, or a frozen older one.
    pub(crate) role: Role,
    /// The facade crate's path.
    pub(crate) krate: Path,
}

/// What the struct is in its event's history.
pub(crate) enum Role {
    /// The current version: published on `subject`, decoding `previous` (oldest first) too.
    Current { subject: LitStr, previous: Vec<Path> },
    /// A frozen older version, listed in the current version's `previous`.
    Frozen,
}

/// Checks every rule, recording each broken one; `None` if any is. The rules are named
/// functions below, each reporting its own mistake once, on its token.
pub(crate) fn event(args: &Args, item: Option<ItemStruct>, errors: &mut Errors) -> Option<Event> {
    let version = version_declared(args, errors);
    subject_concrete(args, errors);
    previous_only_on_current(args, errors);
    let item = item?;
    versioning::check_payload_struct(&item, "domain events", errors);
    let previous = args.previous.get().cloned().unwrap_or_default();
    versioning::check_previous(&item.ident, &previous, errors);
    let role = match args.subject.get().cloned() {
        Some(subject) => Role::Current { subject, previous },
        None => Role::Frozen,
    };
    Some(Event {
        item,
        version: version?,
        role,
        krate: crate::args::facade(&args.krate),
    })
}

/// Rule: the event declares a valid wire version.
fn version_declared(args: &Args, errors: &mut Errors) -> Option<LitStr> {
    let example = match args.subject.get() {
        Some(_) => format!("`{VERSION} = \"1.0\"`"),
        None => format!(
            "`#[domain_event({SUBJECT} = \"document.created\", {VERSION} = \"1.0\")]` for an event, \
             or `#[domain_event({VERSION} = \"1.0\")]` for a frozen older version of one"
        ),
    };
    versioning::version_rule(
        &args.version,
        &format!("missing `{VERSION}`: every event declares its wire version, e.g. {example}"),
        errors,
    )
}

/// Rule: the subject is concrete (no wildcards), by the runtime's subject rule.
fn subject_concrete(args: &Args, errors: &mut Errors) {
    if let Some(subject) = args.subject.get()
        && let Err(error) = subject::check_concrete(subject, subject::Concrete::Event)
    {
        errors.push(error);
    }
}

/// Rule: `previous` belongs on the current version (the one with a subject).
fn previous_only_on_current(args: &Args, errors: &mut Errors) {
    // Only a `previous` whose value parsed: a malformed one is reported already.
    if let (false, Some(_), Some(key)) = (args.subject.given(), args.previous.get(), args.previous.key()) {
        errors.spanned(
            key,
            format!(
                "`{PREVIOUS}` belongs on the current version of an event, the one with a `{SUBJECT}`; \
                 on a frozen older version, remove it and list this type in the current version's `{PREVIOUS}`"
            ),
        );
    }
}
