//! The expansion names only absolute paths: it compiles next to items shadowing the prelude, under
//! `deny(warnings)`, through a facade re-exported under another path.
#![deny(warnings)]
#![allow(dead_code)]

extern crate cim_integrate as platform;

mod integration {
    pub use platform::*;
}

use platform::handler::HandlerError;
use platform::saga::{Saga, StepContext};

struct Result;
struct Ok;
struct Option;
struct String;
struct Vec;
struct Box;
struct Step;
struct Duration;

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Transfer {
    pub amount: u64,
}

pub struct CrossDomainTransaction;

#[integration::saga(name = "cross-domain", data = Transfer, crate = "crate::integration")]
impl CrossDomainTransaction {
    #[step(compensate = "refund", timeout = "2s", attempts = 1)]
    async fn debit(&self, ctx: &mut StepContext<Transfer>) -> ::core::result::Result<(), HandlerError> {
        ctx.data_mut().amount += 1;
        ::core::result::Result::Ok(())
    }

    #[step(no_compensation = "final pivot: the credit is the point of no return")]
    async fn credit(&self, _ctx: &mut StepContext<Transfer>) -> ::core::result::Result<(), HandlerError> {
        ::core::result::Result::Ok(())
    }

    async fn refund(&self, ctx: &mut StepContext<Transfer>) -> ::core::result::Result<(), HandlerError> {
        ctx.data_mut().amount -= 1;
        ::core::result::Result::Ok(())
    }
}

fn main() {
    assert_eq!(<CrossDomainTransaction as Saga>::NAME, "cross-domain");
    assert_eq!(<CrossDomainTransaction as Saga>::steps().len(), 2);
}
