use cim_integrate::domain_event;
use cim_integrate::event::Versioned;

/// serde's own attributes keep working on the fields and the container.
#[domain_event(subject = "organization.founded", version = "1.2")]
#[serde(rename_all = "camelCase")]
#[derive(Debug, PartialEq)]
pub struct OrganizationFounded {
    pub legal_name: String,
    #[serde(rename = "schemaVersion")]
    pub version: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub website: Option<String>,
}

fn main() {
    let event = OrganizationFounded {
        legal_name: "Acme".into(),
        version: 7,
        website: None,
    };
    let bytes = event.encode().unwrap();
    assert_eq!(&bytes[..], br#"{"version":"1.2","legalName":"Acme","schemaVersion":7}"#);
    assert_eq!(OrganizationFounded::decode(&bytes).unwrap(), event);
}
