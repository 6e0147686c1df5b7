use cim_integrate::domain_event;

#[domain_event(subject = "document.changed", version = "1.0")]
pub enum DocumentChanged {
    Renamed { title: String },
    Moved { folder: String },
}

fn main() {}
