// An answer type with a `subject`, and `answer = ...` on a frozen version: one error each, on
// the argument, naming the fix.
use cim_integrate::command;

#[command(answer, subject = "inventory.reserved", version = "1.0")]
pub struct Reserved {
    pub reserved: u32,
}

#[command(version = "1.0", frozen, answer = Reserved)]
pub struct ReserveStockV1 {
    pub quantity: u32,
}

fn main() {}
