use cim_integrate::domain_event;

#[domain_event(subject = "document.created", version = "1.0")]
#[serde(deny_unknown_fields)]
pub struct DocumentCreated {
    pub title: String,
}

fn main() {}
