use cim_integrate::command;

#[command(subject = "document.create", version = "1.0", frozen)]
pub struct CreateDocument {
    pub title: String,
}

fn main() {}
