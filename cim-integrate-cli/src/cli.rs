//! The commands and what they print.

use crate::table::{Table, cut, visible, visible_bytes, visible_json};
use cim_integrate_runtime::Timestamp;
use cim_integrate_runtime::monitor::DeadLetterReason;
use cim_integrate_runtime::ops::{DeadLetter, DeadLetterFilter, Ops, OpsError, SagaFilter, SagaState};
use clap::{Args as ClapArgs, Parser, Subcommand};
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

/// Done.
pub(crate) const EXIT_OK: u8 = 0;
/// Failed; the message says why.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Not found.
pub(crate) const EXIT_NOT_FOUND: u8 = 3;
/// NATS unavailable: try again later.
pub(crate) const EXIT_UNAVAILABLE: u8 = 4;
/// A destructive action was not confirmed.
pub(crate) const EXIT_DECLINED: u8 = 5;
/// Partly done: some selected items were skipped.
pub(crate) const EXIT_PARTIAL: u8 = 6;

/// Operate a CIM deployment on NATS: dead letters, sagas, process managers, handlers, hosts,
/// topology.
///
/// Connects like the library: NATS_URL and the credential variables (NATS_CREDS, NATS_USER and
/// NATS_PASSWORD, NATS_TOKEN, NATS_NKEY_SEED, NATS_CA/NATS_CERT/NATS_KEY); CIM_PREFIX names a
/// deployment prefix.
///
/// Exit codes: 0 done, 1 failed, 2 usage error, 3 not found, 4 NATS unavailable (try again),
/// 5 declined (not confirmed), 6 partly done.
#[derive(Debug, Parser)]
#[command(name = "cim-integrate", version, about, long_about)]
pub(crate) struct Args {
    /// Print JSON (one document) instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// The deployment prefix (`prod`, `prod.eu`), as the hosts were given it.
    #[arg(long, global = true, env = "CIM_PREFIX")]
    pub(crate) prefix: Option<String>,
    /// Answer yes to confirmations (needed for destructive actions when stdin is not a terminal).
    #[arg(long, short = 'y', global = true)]
    pub(crate) yes: bool,
    /// Log what is done (to stderr).
    #[arg(long, short = 'v', global = true)]
    pub(crate) verbose: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Dead letters: list, show, group, redrive, purge.
    #[command(subcommand)]
    Dlq(Dlq),
    /// Sagas: list by status (stuck included), show, retry, forget.
    #[command(subcommand)]
    Saga(SagaCmd),
    /// Process managers: list, show state and pending deadlines.
    #[command(subcommand)]
    Process(ProcessCmd),
    /// Every handler's durable: lag, ack pending, redeliveries, breaker state.
    Handlers,
    /// The live hosts: since when they run, when they last wrote their status, their handlers'
    /// counts, and how far their clocks are from the NATS server's.
    Hosts,
    /// Streams and consumers as the server reports them, and the live hosts' declared topology.
    Topology,
    /// Serve the web console (embedded in this binary).
    Console {
        /// Where to listen. Loopback needs no token; any other address requires one.
        #[arg(long, default_value = "127.0.0.1:8222")]
        listen: std::net::SocketAddr,
        /// The token every request must carry (`Authorization: Bearer`, or `?token=` for the page).
        #[arg(long, env = "CIM_CONSOLE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SagaCmd {
    /// List the sagas of one kind (or the saga kinds, without a name).
    List {
        /// The saga's name (its bucket is `cim_saga_{NAME}`); without it, the names.
        name: Option<String>,
        /// Only this status: running, compensating, completed, compensated, needs_attention,
        /// stuck, released.
        #[arg(long, value_parser = parse_saga_state)]
        status: Option<SagaState>,
    },
    /// Show one saga: its steps done and remaining.
    Show {
        /// The saga's name.
        name: String,
        /// The saga's id.
        id: String,
    },
    /// Retry a saga that needs attention or is stuck: a running host takes it up again.
    Retry {
        /// The saga's name.
        name: String,
        /// The saga's id.
        id: String,
    },
    /// Forget a settled (completed or compensated) saga.
    Forget {
        /// The saga's name.
        name: String,
        /// The saga's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProcessCmd {
    /// List the instances of one process manager (or the process managers, without a name).
    List {
        /// The process manager's name (its bucket is `cim_pm_{NAME}`).
        name: Option<String>,
    },
    /// Show one instance: its state and pending deadlines.
    Show {
        /// The process manager's name.
        name: String,
        /// The instance's key.
        key: String,
    },
}

fn parse_saga_state(s: &str) -> Result<SagaState, String> {
    SagaState::parse(s).ok_or_else(|| {
        format!("unknown status `{s}`; one of running, compensating, completed, compensated, needs_attention, stuck, released")
    })
}

#[derive(Debug, Subcommand)]
pub(crate) enum Dlq {
    /// List dead letters (oldest first).
    List(Select),
    /// Show one dead letter: reason, original headers and payload.
    Show {
        /// Its sequence in DEAD_LETTERS (the SEQ column of `list`).
        sequence: u64,
    },
    /// Group dead letters by failure fingerprint (handler, kind, normalised reason).
    Groups(Select),
    /// Send dead letters back to their handlers, the original identity kept. Safe to interrupt
    /// and repeat: nothing is handled twice.
    Redrive(Target),
    /// Delete dead letters.
    Purge(Target),
}

/// Which dead letters (every given filter must match).
#[derive(Debug, Clone, ClapArgs)]
pub(crate) struct Select {
    /// Only this handler (its durable name `set-handler`, or its name).
    #[arg(long)]
    handler: Option<String>,
    /// Only this kind: permanent, undecodable, exhausted, invalid_envelope.
    #[arg(long, value_parser = parse_kind)]
    kind: Option<DeadLetterReason>,
    /// Only those dead-lettered since: RFC 3339 (`2026-12-01T10:00:00Z`) or an age (`90s`, `15m`,
    /// `2h`, `7d`).
    #[arg(long, value_parser = parse_time)]
    since: Option<Timestamp>,
    /// Only those dead-lettered before (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    until: Option<Timestamp>,
    /// Only this failure group (the FINGERPRINT of `groups`).
    #[arg(long)]
    group: Option<String>,
}

/// What a redrive or purge applies to: sequences, or a selection; one of them is required, so
/// that "everything" is always said explicitly (`--all`).
#[derive(Debug, Clone, ClapArgs)]
pub(crate) struct Target {
    /// These dead letters (sequences in DEAD_LETTERS).
    sequences: Vec<u64>,
    #[command(flatten)]
    select: Select,
    /// Every dead letter the filters select (with no filter: every dead letter).
    #[arg(long)]
    all: bool,
}

fn parse_kind(s: &str) -> Result<DeadLetterReason, String> {
    DeadLetterReason::parse(s).ok_or_else(|| {
        let kinds: Vec<_> = DeadLetterReason::ALL.iter().map(|k| k.as_str()).collect();
        format!("unknown kind `{s}`; one of {}", kinds.join(", "))
    })
}

/// RFC 3339, or an age before now: a number and `s`, `m`, `h` or `d`.
fn parse_time(s: &str) -> Result<Timestamp, String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is neither RFC 3339 nor an age like 15m"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("`{s}`: the unit of an age is s, m, h or d")),
    };
    let nanos = Timestamp::now().unix_nanos() - i128::from(secs) * 1_000_000_000;
    Timestamp::from_unix_nanos(nanos).ok_or_else(|| format!("`{s}` is too far back"))
}

impl Select {
    fn filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            handler: self.handler.clone(),
            kind: self.kind,
            since: self.since,
            until: self.until,
            fingerprint: self.group.clone(),
            sequences: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.handler.is_none()
            && self.kind.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.group.is_none()
    }
}

impl Target {
    fn filter(&self) -> Result<DeadLetterFilter, Failure> {
        let mut f = self.select.filter();
        if !self.sequences.is_empty() {
            f.sequences = Some(self.sequences.clone());
        } else if self.select.is_empty() && !self.all {
            return Err(Failure::usage(
                "say which dead letters: sequences, filters (--handler, --kind, --since, --until, --group), or --all",
            ));
        }
        Ok(f)
    }
}

/// Why a command did not finish, with its exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: &str) -> Self {
        Self {
            code: 2,
            message: message.to_owned(),
        }
    }
}

impl From<OpsError> for Failure {
    fn from(e: OpsError) -> Self {
        let code = match &e {
            OpsError::NotFound(_) => EXIT_NOT_FOUND,
            e if e.is_transient() => EXIT_UNAVAILABLE,
            _ => EXIT_FAILED,
        };
        let message = if e.is_transient() {
            format!("{e} (NATS is unavailable; try again)")
        } else {
            e.to_string()
        };
        Self { code, message }
    }
}

/// Runs the command; returns the exit code.
pub(crate) async fn run(args: Args) -> u8 {
    match execute(&args).await {
        Ok(code) => code,
        Err(f) => {
            if args.json {
                let doc = serde_json::json!({ "error": f.message, "exit_code": f.code });
                println!("{}", visible_json(&doc.to_string()));
            } else {
                eprintln!("error: {}", visible(&f.message, false));
            }
            f.code
        }
    }
}

async fn connect(args: &Args) -> Result<Ops, Failure> {
    // The flag wins over the environment (clap already read CIM_PREFIX into it).
    let ops = Ops::from_env().await?;
    let prefix = match args.prefix.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) => Some(cim_integrate_runtime::Subject::new(p).map_err(|e| Failure {
            code: 2,
            message: format!("--prefix `{p}`: {e}"),
        })?),
        None => None,
    };
    Ok(ops.with_prefix(prefix))
}

async fn execute(args: &Args) -> Result<u8, Failure> {
    let ops = connect(args).await?;
    match &args.command {
        Command::Dlq(cmd) => dlq(&ops, args, cmd).await,
        Command::Saga(cmd) => saga(&ops, args, cmd).await,
        Command::Process(cmd) => process(&ops, args, cmd).await,
        Command::Handlers => handlers(&ops, args).await,
        Command::Hosts => hosts(&ops, args).await,
        Command::Topology => topology(&ops, args).await,
        Command::Console { listen, token } => crate::console::serve(ops, *listen, token.clone())
            .await
            .map(|()| EXIT_OK)
            .map_err(|e| Failure {
                code: match e {
                    crate::console::ConsoleError::TokenRequired(_) => 2,
                    crate::console::ConsoleError::Bind(_) => EXIT_FAILED,
                },
                message: e.to_string(),
            }),
    }
}

/// The JetStream domain the tool reads, when there is one to name: `(name, true)` for the
/// server's own (its INFO's `domain`, `NATS_JS_DOMAIN` unset), `(name, false)` for the one
/// `NATS_JS_DOMAIN` names. At an edge site, a leaf node's own JetStream answers unless
/// `NATS_JS_DOMAIN` names the hub's, and an operator who forgot it would otherwise read that the
/// hub has nothing.
pub(crate) fn jetstream_domain(ops: &Ops) -> Option<(String, bool)> {
    let t = ops.transport();
    match (t.options().js_domain.clone(), t.client().server_info().domain) {
        (Some(asked), _) => Some((asked, false)),
        (None, Some(own)) if !own.is_empty() => Some((own, true)),
        _ => None,
    }
}

/// "no {what}", saying where the tool looked when there is a JetStream domain to name.
fn none(ops: &Ops, what: &str) -> String {
    match jetstream_domain(ops) {
        Some((name, false)) => format!("no {what} in JetStream domain `{name}`\n"),
        Some((name, true)) => format!(
            "no {what} in JetStream domain `{name}`, the server's own (NATS_JS_DOMAIN names another, e.g. a hub's)\n"
        ),
        None => format!("no {what}\n"),
    }
}

/// Prints `value` as JSON, or `table` for people.
fn output(args: &Args, value: &impl serde::Serialize, table: impl FnOnce() -> String) -> Result<u8, Failure> {
    if args.json {
        print_json(value)?;
    } else {
        say(&table());
    }
    Ok(EXIT_OK)
}

fn names_table(ops: &Ops, what: &str, names: &[String]) -> String {
    if names.is_empty() {
        return none(ops, what);
    }
    names.iter().map(|n| format!("{n}\n")).collect()
}

async fn saga(ops: &Ops, args: &Args, cmd: &SagaCmd) -> Result<u8, Failure> {
    match cmd {
        SagaCmd::List { name: None, .. } => {
            let names = ops.saga_names().await?;
            output(args, &names, || names_table(ops, "sagas", &names))
        }
        SagaCmd::List {
            name: Some(name),
            status,
        } => {
            let filter = status.map_or_else(SagaFilter::all, SagaFilter::state);
            let list = ops.sagas(name, &filter).await?;
            output(args, &list, || {
                let mut t = Table::new(&["ID", "STATUS", "STARTED", "STEP", "DONE", "OWNER", "ERROR"]);
                for s in &list {
                    t.row(vec![
                        s.id.clone(),
                        s.state.as_str().to_owned(),
                        time(Some(s.started_at)),
                        s.current_step.clone().unwrap_or_else(|| "-".into()),
                        format!("{}/{}", s.steps_done, s.steps_total),
                        s.owner.clone(),
                        cut(s.error.as_deref().unwrap_or(""), 50),
                    ]);
                }
                if t.is_empty() { none(ops, "sagas") } else { t.render() }
            })
        }
        SagaCmd::Show { name, id } => {
            let v = ops.saga(name, id).await?;
            output(args, &v, || {
                let s = &v.summary;
                let mut out = format!(
                    "saga          {}\nid            {}\nstatus        {}\nstarted       {}\nowner         {}\ncorrelation   {}\n",
                    s.saga,
                    s.id,
                    s.state.as_str(),
                    time(Some(s.started_at)),
                    s.owner,
                    s.correlation_id
                );
                out.push_str(&format!("completed     {}\n", v.completed.join(", ")));
                out.push_str(&format!("compensated   {}\n", v.compensated.join(", ")));
                out.push_str(&format!("remaining     {}\n", v.remaining.join(", ")));
                if let Some(e) = &s.error {
                    out.push_str(&format!("error         {e}\n"));
                }
                out.push_str(&format!("data          {}\n", v.data));
                out
            })
        }
        SagaCmd::Retry { name, id } => {
            confirm(args, &format!("retry saga {name} {id}?"))?;
            let s = ops.retry_saga(name, id).await?;
            output(args, &s, || {
                format!(
                    "{} {}: {}; a running host takes it up\n",
                    s.saga,
                    s.id,
                    s.state.as_str()
                )
            })
        }
        SagaCmd::Forget { name, id } => {
            confirm(args, &format!("forget saga {name} {id} for good?"))?;
            ops.forget_saga(name, id).await?;
            output(args, &serde_json::json!({ "forgotten": id }), || {
                format!("forgotten: {name} {id}\n")
            })
        }
    }
}

async fn process(ops: &Ops, args: &Args, cmd: &ProcessCmd) -> Result<u8, Failure> {
    match cmd {
        ProcessCmd::List { name: None } => {
            let names = ops.process_names().await?;
            output(args, &names, || names_table(ops, "process managers", &names))
        }
        ProcessCmd::List { name: Some(name) } => {
            let list = ops.processes(name).await?;
            output(args, &list, || {
                serde_json::to_string_pretty(&list).map_or_else(|e| e.to_string(), |s| s + "\n")
            })
        }
        ProcessCmd::Show { name, key } => {
            let v = ops.process(name, key).await?;
            output(args, &v, || {
                serde_json::to_string_pretty(&v).map_or_else(|e| e.to_string(), |s| s + "\n")
            })
        }
    }
}

async fn handlers(ops: &Ops, args: &Args) -> Result<u8, Failure> {
    let list = ops.handlers().await?;
    output(args, &list, || {
        let mut t = Table::new(&["STREAM", "DURABLE", "LAG", "ACK PENDING", "REDELIVERED", "BREAKER"]);
        for h in &list {
            let breakers: Vec<&str> = h.breakers.iter().map(|(_, s)| s.as_str()).collect();
            t.row(vec![
                h.stream.clone(),
                h.durable.clone(),
                h.num_pending.to_string(),
                h.num_ack_pending.to_string(),
                h.num_redelivered.to_string(),
                if breakers.is_empty() {
                    "-".into()
                } else {
                    breakers.join(",")
                },
            ]);
        }
        if t.is_empty() {
            none(ops, "handlers")
        } else {
            t.render()
        }
    })
}

async fn hosts(ops: &Ops, args: &Args) -> Result<u8, Failure> {
    use cim_integrate_runtime::service::status::{CLOCK_TOLERANCE, HostStatus};
    let list = ops.hosts().await?;
    output(args, &list, || {
        let mut t = Table::new(&[
            "SERVICE",
            "INSTANCE",
            "STARTED",
            "LAST STATUS",
            "HANDLERS",
            "HANDLED",
            "CLOCK",
        ]);
        let mut differ = 0;
        for h in &list {
            let clock = match h.clock_offset_ms {
                Some(ms) if HostStatus::clock_differs(ms) => {
                    differ += 1;
                    format!("{:+.1} s (!)", ms as f64 / 1000.0)
                }
                // Within 50 ms (a write's transit), no sign.
                Some(ms) if ms.abs() < 50 => "0.0 s".into(),
                Some(ms) => format!("{:+.1} s", ms as f64 / 1000.0),
                None => "-".into(),
            };
            t.row(vec![
                h.service.clone(),
                h.instance.clone(),
                time(Some(h.started_at)),
                time(Some(h.updated_at)),
                h.handlers.len().to_string(),
                h.handlers.iter().map(|x| x.stats.succeeded).sum::<u64>().to_string(),
                clock,
            ]);
        }
        if t.is_empty() {
            return none(ops, "live hosts");
        }
        let mut out = t.render();
        if differ > 0 {
            out.push_str(&format!(
                "\n(!) {differ} host(s) with a clock more than {} s from the NATS server's (CLOCK: ahead +, behind -): saga leases, process-manager deadlines and the dedup layer's 5 s margin compare clocks across hosts; synchronize them (NTP)\n",
                CLOCK_TOLERANCE.as_secs()
            ));
        }
        out
    })
}

async fn topology(ops: &Ops, args: &Args) -> Result<u8, Failure> {
    let t = ops.topology().await?;
    output(args, &t, || {
        let mut out = String::new();
        for s in &t.streams {
            out.push_str(&format!(
                "{}  [{}]  {} messages, R{}{}\n",
                s.name,
                s.subjects.join(" "),
                s.messages,
                s.replicas,
                s.leader.as_deref().map(|l| format!(", leader {l}")).unwrap_or_default()
            ));
            for c in &s.consumers {
                out.push_str(&format!(
                    "  {}  [{}]  {} pending\n",
                    c.durable,
                    c.filters.join(" "),
                    c.pending
                ));
            }
        }
        out.push_str(&format!(
            "live hosts: {}\n",
            if t.hosts.is_empty() {
                "none".into()
            } else {
                t.hosts.join(", ")
            }
        ));
        out
    })
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure {
        code: EXIT_FAILED,
        message: format!("cannot write JSON: {e}"),
    })?;
    println!("{}", visible_json(&text));
    Ok(())
}

/// Prints text for people, with what a terminal would act on shown escaped (see
/// [`visible`]): a safety net under the tables and fields, which escape their cells themselves.
fn say(text: &str) {
    print!("{}", visible(text, true));
}

fn time(t: Option<Timestamp>) -> String {
    t.map(|t| {
        let s = t.to_rfc3339();
        // Seconds are enough in a table.
        s.get(..19).map_or(s.clone(), |d| format!("{}Z", d.replace('T', " ")))
    })
    .unwrap_or_else(|| "-".into())
}

/// Asks on the terminal; without one, `--yes` is required.
fn confirm(args: &Args, question: &str) -> Result<(), Failure> {
    if args.yes {
        return Ok(());
    }
    let declined = |why: &str| Failure {
        code: EXIT_DECLINED,
        message: format!("{question}: {why}"),
    };
    if !std::io::stdin().is_terminal() {
        return Err(declined("not confirmed (stdin is not a terminal; pass --yes)"));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| declined(&e.to_string()))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(declined("declined"))
    }
}

async fn dlq(ops: &Ops, args: &Args, cmd: &Dlq) -> Result<u8, Failure> {
    match cmd {
        Dlq::List(select) => {
            let letters = ops.dead_letters(&select.filter()).await?;
            if args.json {
                print_json(&letters)?;
            } else {
                say(&letters_table(ops, &letters));
            }
            Ok(EXIT_OK)
        }
        Dlq::Show { sequence } => {
            let l = ops.dead_letter(*sequence).await?;
            if args.json {
                print_json(&l)?;
            } else {
                say(&show_letter(&l));
            }
            Ok(EXIT_OK)
        }
        Dlq::Groups(select) => {
            let groups = ops.dead_letter_groups(&select.filter()).await?;
            if args.json {
                print_json(&groups)?;
            } else {
                let mut t = Table::new(&["COUNT", "HANDLER", "KIND", "LAST", "REASON", "FINGERPRINT"]);
                for g in &groups {
                    t.row(vec![
                        g.count.to_string(),
                        g.handler.clone(),
                        g.kind.clone(),
                        time(g.last),
                        cut(&g.reason, 60),
                        g.fingerprint.clone(),
                    ]);
                }
                say(&if t.is_empty() {
                    none(ops, "dead letters")
                } else {
                    t.render()
                });
            }
            Ok(EXIT_OK)
        }
        Dlq::Redrive(target) => {
            let filter = target.filter()?;
            let selected = ops.dead_letters(&filter).await?;
            if selected.is_empty() {
                return nothing(args);
            }
            confirm(
                args,
                &format!("redrive {} dead letter(s) to their handlers?", selected.len()),
            )?;
            let filter = DeadLetterFilter {
                sequences: Some(selected.iter().map(|l| l.sequence).collect()),
                ..filter
            };
            let bar = progress(args, selected.len());
            let report = ops
                .redrive(&filter, |p| {
                    if let Some(b) = &bar {
                        b.set_position(p.done as u64);
                    }
                })
                .await;
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let report = report?;
            if args.json {
                print_json(&report)?;
            } else {
                let mut out = format!("redriven: {}\n", report.redriven.len());
                for (seq, why) in &report.skipped {
                    out.push_str(&format!("skipped #{seq}: {}\n", visible(why, false)));
                }
                say(&out);
            }
            Ok(if report.skipped.is_empty() {
                EXIT_OK
            } else {
                EXIT_PARTIAL
            })
        }
        Dlq::Purge(target) => {
            let filter = target.filter()?;
            let selected = ops.dead_letters(&filter).await?;
            if selected.is_empty() {
                return nothing(args);
            }
            confirm(args, &format!("delete {} dead letter(s) for good?", selected.len()))?;
            let filter = DeadLetterFilter {
                sequences: Some(selected.iter().map(|l| l.sequence).collect()),
                ..filter
            };
            let report = ops.purge_dead_letters(&filter).await?;
            if args.json {
                print_json(&report)?;
            } else {
                println!("purged: {}", report.purged.len());
            }
            Ok(EXIT_OK)
        }
    }
}

fn nothing(args: &Args) -> Result<u8, Failure> {
    if args.json {
        print_json(&serde_json::json!({ "selected": 0 }))?;
    } else {
        println!("no dead letters selected");
    }
    Ok(EXIT_OK)
}

/// A progress bar on stderr for people (not with --json, not when stderr is not a terminal).
fn progress(args: &Args, total: usize) -> Option<indicatif::ProgressBar> {
    if args.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} redriven ({eta} left)") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

fn letters_table(ops: &Ops, letters: &[DeadLetter]) -> String {
    if letters.is_empty() {
        return none(ops, "dead letters");
    }
    let mut t = Table::new(&["SEQ", "AT", "HANDLER", "KIND", "SUBJECT", "TRIES", "REDRIVES", "REASON"]);
    for l in letters {
        t.row(vec![
            l.sequence.to_string(),
            time(l.at),
            l.handler.clone(),
            l.kind_label().to_owned(),
            l.subject.clone(),
            l.deliveries.to_string(),
            l.redrives.to_string(),
            cut(&l.reason, 60),
        ]);
    }
    t.render()
}

fn show_letter(l: &DeadLetter) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: &str| out.push_str(&format!("{name:<14}{}\n", visible(value, false)));
    field("sequence", &l.sequence.to_string());
    field("handler", &l.handler);
    field("kind", l.kind_label());
    field("reason", &l.reason);
    field("at", &time(l.at));
    field("subject", &l.subject);
    field("original", &format!("{} #{}", l.stream, l.stream_sequence));
    field("deliveries", &l.deliveries.to_string());
    field("redrives", &l.redrives.to_string());
    field("message id", &l.identity.message_id.to_string());
    field("correlation", &l.identity.correlation_id.to_string());
    field("causation", &l.identity.causation_id.to_string());
    field("event type", l.event_type.as_deref().unwrap_or("-"));
    out.push_str("headers\n");
    for (n, v) in &l.headers {
        out.push_str(&format!("  {}: {}\n", visible(n, false), visible(v, false)));
    }
    match l.payload_omitted {
        Some(size) => out.push_str(&format!(
            "payload       (not in the letter: {size} bytes; still in the original's stream)\n"
        )),
        None => {
            let (text, utf8) = visible_bytes(&l.payload);
            if utf8 {
                out.push_str("payload\n");
            } else {
                out.push_str(&format!(
                    "payload       ({} bytes, not UTF-8: other bytes as \\xNN; --json gives them all in base64)\n",
                    l.payload.len()
                ));
            }
            out.push_str(&text);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_ages() {
        assert!(parse_time("2026-12-01T10:00:00Z").is_ok());
        let hour_ago = parse_time("1h").unwrap();
        let delta = Timestamp::now().unix_millis() - hour_ago.unix_millis();
        assert!((3_599_000..3_601_000).contains(&delta), "{delta}");
        for bad in ["", "h", "5y", "yesterday", "99999999999999999999d"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert!(parse_kind("exhausted").is_ok());
        assert!(parse_kind("bogus").unwrap_err().contains("permanent"));
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
