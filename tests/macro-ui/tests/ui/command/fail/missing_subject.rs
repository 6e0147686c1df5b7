use cim_integrate::command;

#[command(version = "1.0")]
pub struct CreateDocument {
    pub title: String,
}

fn main() {}
