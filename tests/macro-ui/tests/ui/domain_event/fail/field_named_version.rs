use cim_integrate::domain_event;

#[domain_event(subject = "document.revised", version = "1.0")]
pub struct DocumentRevised {
    pub title: String,
    pub version: u32,
}

fn main() {}
