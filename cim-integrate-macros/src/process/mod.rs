//! `#[process(name = "...", key = field)]` on the `impl` block of a process manager's state.
//!
//! Every method is an event handler, `async fn name(&mut self, ctx: &mut ProcessContext, event: E)
//! -> Result<(), HandlerError>`, keyed by the event's field `key` (or the method's own
//! `#[key(field)]`); one method marked `#[deadline]` reacts to due deadlines,
//! `async fn name(&mut self, ctx: &mut ProcessContext, deadline: Deadline) -> Result<(), HandlerError>`.
//!
//! - [`parse`]: the arguments and the block;
//! - [`validate`]: handler signatures, keys, one deadline, a name;
//! - [`expand`]: the block (helper attributes removed) and, inside `const _: () = { ... };`, one
//!   key function per handler (`event.field`, so a missing field is a compile error on the key),
//!   one call shim per handler, a check that every handler's key field has the same type, and the
//!   `ProcessManager` impl listing them.

mod expand;
mod parse;
mod validate;

#[cfg(test)]
mod tests;

use crate::errors::{self, Errors};
use proc_macro2::TokenStream;

/// Expands `#[process(attr)] impl State { ... }`. On any mistake: every error, beside the block
/// (without its helper attributes) and a stub `ProcessManager` impl.
pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse::Args::parse(attr, &mut errors);
    let Some(block) = parse::item(item.clone(), &mut errors) else {
        return errors::emit(errors, item);
    };
    let krate = crate::args::facade(&args.krate);
    let fallback = validate::without_helpers(block.clone());
    let process = validate::process(args, block, &mut errors);
    match (errors.finish(), process) {
        (Ok(()), Some(process)) => expand::process(&process),
        (Err(error), _) => {
            let mut out = errors::with_item(error, &fallback);
            out.extend(crate::stubs::process(&krate, &fallback));
            out
        }
        // Validation fails only with an error; should it not, the block is kept as written.
        (Ok(()), None) => quote::quote!(#fallback),
    }
}
