use cim_integrate::domain_event;

#[domain_event(version = "2.0", previous = [DocumentCreatedV1])]
pub struct DocumentCreatedV2 {
    pub title: String,
}

#[domain_event(version = "1.0")]
pub struct DocumentCreatedV1 {
    pub title: String,
}

fn main() {}
