//! The expansion names everything by absolute path: it compiles in a module that shadows the
//! prelude's `Result`, `Ok`, `Err`, `Option`, `Some`, `None`, `String`, `Box`, `Vec`, and in
//! one with no implicit prelude at all, and it raises no warnings or clippy lints.
#![deny(warnings, clippy::all)]

#[allow(dead_code, non_camel_case_types)]
mod shadowed {
    use cim_integrate::domain_event;

    pub struct Result;
    pub struct Option;
    pub struct String;
    pub struct Box;
    pub struct Vec;
    pub struct Ok;
    pub struct Err;
    pub struct Some;
    pub struct None;
    pub trait From {}
    pub trait Into {}
    pub trait Default {}

    #[domain_event(subject = "document.created", version = "2.0", previous = [DocumentCreatedV1])]
    #[derive(Debug, PartialEq)]
    pub struct DocumentCreated {
        pub title: std::string::String,
        pub pages: u32,
    }

    #[domain_event(version = "1.0")]
    pub struct DocumentCreatedV1 {
        pub title: std::string::String,
    }

    impl core::convert::From<DocumentCreatedV1> for DocumentCreated {
        fn from(v1: DocumentCreatedV1) -> Self {
            Self {
                title: v1.title,
                pages: 0,
            }
        }
    }
}

#[no_implicit_prelude]
#[allow(dead_code)]
mod no_prelude {
    #[::cim_integrate::domain_event(subject = "person.registered", version = "1.0")]
    pub struct PersonRegistered {
        pub name: ::std::string::String,
    }
}

#[test]
fn shadowed_names_do_not_leak_into_the_expansion() {
    use cim_integrate::event::Versioned;
    let v1 = br#"{"version":"1.0","title":"t"}"#;
    let event = shadowed::DocumentCreated::decode(v1).unwrap();
    assert_eq!(
        event,
        shadowed::DocumentCreated {
            title: "t".into(),
            pages: 0
        }
    );
    let person = no_prelude::PersonRegistered { name: "n".into() };
    assert_eq!(&person.encode().unwrap()[..], br#"{"version":"1.0","name":"n"}"#);
}
