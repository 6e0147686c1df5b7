use cim_integrate::saga;

#[saga(data = Other)]
pub struct Other;

fn main() {}
