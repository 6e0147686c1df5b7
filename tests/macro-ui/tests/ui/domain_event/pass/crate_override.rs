extern crate cim_integrate as platform;

/// A crate that re-exports the facade under its own path.
mod integration {
    pub use platform::*;
}

use platform::event::Versioned;

#[platform::domain_event(subject = "person.registered", version = "1.0", crate = "::platform")]
pub struct PersonRegistered {
    pub name: String,
}

#[integration::domain_event(subject = "person.renamed", version = "1.0", crate = "crate::integration")]
pub struct PersonRenamed {
    pub name: String,
}

fn main() {
    let a = PersonRegistered { name: "a".into() }.encode().unwrap();
    let b = PersonRenamed { name: "a".into() }.encode().unwrap();
    assert_eq!(a, b);
}
