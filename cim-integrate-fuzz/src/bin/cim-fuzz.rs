//! A time-bounded mutation fuzzer for the targets of `cim-integrate-fuzz`, on stable Rust.
//!
//! ```text
//! cim-fuzz [--target decode|envelope|subject|all] [--seconds N] [--seed N] [--corpus DIR]
//!          [--max-len N] [--save] [--replay FILE]
//! ```
//!
//! It loads the corpus (`corpus/<target>/*`, plus the golden event payloads of
//! `tests/fixtures/events` for `decode`, plus built-in seeds), then repeatedly picks an input,
//! mutates it (bit flips, interesting bytes, inserted and deleted ranges, dictionary tokens,
//! splices, truncation) and runs the target under `catch_unwind`. There is no coverage
//! instrumentation on stable; as feedback an input joins the in-memory corpus when the target
//! reports an outcome class not seen before (a new error variant or branch). `--save` writes such
//! inputs to the corpus directory.
//!
//! A panic (a broken invariant) saves the input to `artifacts/<target>/crash-<hash>`, prints it,
//! and makes the exit status 1. The sequence is deterministic for a given `--seed` and corpus, so
//! a run can be reproduced; `--replay FILE` runs one saved input.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const DICTIONARY: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"true",
    b"1e999",
    b"-0",
    b"18446744073709551616",
    b"\"version\"",
    b"\"version\":\"1.0\"",
    b"\"version\":\"2.0\"",
    b"\"version\":\"3.0\"",
    b"\"version\":2.0",
    b"\"document_id\":\"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071\"",
    b"\"title\":\"t\"",
    b"\"tags\":[]",
    b"\"author\":null",
    b"\n",
    b"\n\n",
    b"Nats-Msg-Id:",
    b"X-Message-ID:",
    b"X-Correlation-ID:",
    b"X-Causation-ID:",
    b"X-Event-Type:",
    b"X-Event-Version:",
    b"X-Occurred-At:",
    b"2024-01-02T03:04:05Z",
    b"9999-12-31T23:59:59",
    b"0000-01-01T00:00:00",
    b"-23:59",
    b"+23:59",
    b".999999999",
    b"00-",
    b"-01",
    b"ff",
    b"\"kind\":\"started\"",
    b"\"seq\":4294967296",
    b"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071",
    b".",
    b"*",
    b">",
    b"..",
    b".>",
    b"*.",
    b"document",
    b"\xff",
    b"\xc3\xa9",
    b"\r\n",
    b"\t",
    b" ",
];

const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'.', b'*', b'>', b'"', b'\\', b'\n', b':', b'{', b'}',
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8], max_len: usize) {
    let rounds = 1 + rng.below(6);
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                input.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(32)).min(len);
                let chunk = input[a..b].to_vec();
                let at = rng.below(input.len() + 1);
                let most = if rng.below(8) == 0 { 200 } else { 3 };
                let times = 1 + rng.below(most);
                for _ in 0..times {
                    input.splice(at..at, chunk.iter().copied());
                }
            }
            5 | 6 => {
                let token = DICTIONARY[rng.below(DICTIONARY.len())];
                let i = rng.below(len + 1);
                input.splice(i..i, token.iter().copied());
            }
            7 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            8 if len > 0 => input.truncate(rng.below(len)),
            _ => {}
        }
    }
    input.truncate(max_len);
}

fn seeds(target: &str, workspace: &Path) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = match target {
        "decode" => vec![
            br#"{"version":"3.0","document_id":"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071","title":"t","author":null,"tags":["a"]}"#.to_vec(),
            br#"{"version":"1.0","document_id":"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071","title":"t"}"#.to_vec(),
            br#"{"title":"t","version":"2.0","document_id":"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071","author":"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6072"}"#.to_vec(),
            b"{}".to_vec(),
        ],
        "envelope" => vec![
            b"document.created\nNats-Msg-Id:0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071\nX-Message-ID:0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071\nX-Correlation-ID:0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6072\nX-Causation-ID:0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6073\nX-Event-Type:DocumentCreated\nX-Event-Version:1.0\nX-Occurred-At:2024-01-02T03:04:05Z\n\n{}".to_vec(),
            b"document.created\n\n{\"a\":1}".to_vec(),
            b"a.b\nNats-Msg-Id:abc\n\n".to_vec(),
        ],
        "timestamp" => vec![
            b"2026-11-24T13:25:00Z".to_vec(),
            b"2026-11-24T13:25:00.123456789+01:00".to_vec(),
            b"9999-12-31T23:59:59.5-00:30".to_vec(),
            b"0000-01-01T00:00:00+00:00".to_vec(),
            b"2026-11-24t13:25:00z".to_vec(),
        ],
        "traceparent" => vec![
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra".to_vec(),
        ],
        "saga_event" => vec![
            br#"{"version":"1.0","kind":"started","saga":"order","saga_id":"o-1","seq":0}"#.to_vec(),
            br#"{"version":"1.0","kind":"step_failed","saga":"order","saga_id":"o-1","step":"pay","error":"declined","attempts":3,"seq":4}"#.to_vec(),
        ],
        // The golden records (below) and a small one with escapes.
        "saga_record" => vec![
            br#"{"format":2,"saga":"o\"rder","id":"1\n","identity":{"message_id":"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071","correlation_id":"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071","causation_id":"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071"},"started_at":"2026-11-24T13:25:00Z","status":"running","data":{"a":[1,2.5,null]},"steps":[{"name":"p\u0001ay","state":"running","attempts":1}],"event_seq":1,"outbox":[{"kind":"started","seq":0}],"owner":"w\\1","lease_until_ms":5}"#.to_vec(),
        ],
        "json" => vec![
            br#"{"title":"t\n\u00e9 \"q\"","tags":["a","b\\c"],"size":-1.5e-7,"extra":{"k":[null,true,1e300]},"counts":{"7":"x"}}"#.to_vec(),
            br#"[1,"two",{"three":3.0},[],{}]"#.to_vec(),
            "{\"title\":\"café ☕\"}".as_bytes().to_vec(),
            b"{\"title\":\"\xff\"}".to_vec(),
        ],
        "dedup_block" => vec![
            b"\x05\x01\0\0\0\0\0\0\0".to_vec(),
            [&b"\x05\x01\0\0\0\0\0\0\0"[..], b"\x01\x02\0\0\0\0\0\0\0\x09\x03\0\0\0\0\0\0\0"].concat(),
        ],
        _ => vec![
            b"document.*\ndocument.created".to_vec(),
            b"document.>\ndocument.created.v2".to_vec(),
            b"*.created\ndocument.created".to_vec(),
            b">\na".to_vec(),
        ],
    };
    if target == "saga_record" {
        let fixtures = workspace.join("cim-integrate-runtime/tests/fixtures/saga");
        if let Ok(files) = std::fs::read_dir(&fixtures) {
            out.extend(files.flatten().filter_map(|f| std::fs::read(f.path()).ok()));
        }
    }
    if target == "decode" {
        let fixtures = workspace.join("tests/fixtures/events");
        if let Ok(dirs) = std::fs::read_dir(&fixtures) {
            for dir in dirs.flatten() {
                if let Ok(files) = std::fs::read_dir(dir.path()) {
                    out.extend(files.flatten().filter_map(|f| std::fs::read(f.path()).ok()));
                }
            }
        }
    }
    out
}

fn hash(data: &[u8]) -> u64 {
    // FNV-1a
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct Outcome {
    execs: u64,
    corpus: usize,
    classes: usize,
    crashes: usize,
}

fn fuzz(target: &str, budget: Duration, seed: u64, corpus_dir: &Path, save: bool, max_len: usize) -> Outcome {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let dir = corpus_dir.join(target);
    let mut corpus = seeds(target, &workspace);
    if let Ok(files) = std::fs::read_dir(&dir) {
        let mut files: Vec<PathBuf> = files.flatten().map(|f| f.path()).collect();
        files.sort();
        corpus.extend(files.iter().filter_map(|f| std::fs::read(f).ok()));
    }
    let mut classes = HashSet::new();
    for input in &corpus {
        if let Ok(Some(c)) = std::panic::catch_unwind(|| cim_integrate_fuzz::run(target, input)) {
            classes.insert(c);
        }
    }
    let mut rng = Rng(seed | 1);
    let start = Instant::now();
    let mut execs = 0u64;
    let mut crashes = 0;
    while start.elapsed() < budget {
        for _ in 0..64 {
            let base = corpus[rng.below(corpus.len())].clone();
            let other = corpus[rng.below(corpus.len())].clone();
            let mut input = base;
            mutate(&mut rng, &mut input, &other, max_len);
            execs += 1;
            match std::panic::catch_unwind(|| cim_integrate_fuzz::run(target, &input)) {
                Ok(Some(c)) => {
                    if classes.insert(c) && corpus.len() < 10_000 {
                        if save {
                            let _ = std::fs::create_dir_all(&dir);
                            let _ = std::fs::write(dir.join(format!("{:016x}", hash(&input))), &input);
                        }
                        corpus.push(input);
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    crashes += 1;
                    let art = workspace.join("cim-integrate-fuzz/artifacts").join(target);
                    let path = art.join(format!("crash-{:016x}", hash(&input)));
                    let _ = std::fs::create_dir_all(&art);
                    let _ = std::fs::write(&path, &input);
                    eprintln!(
                        "CRASH in {target}: input saved to {} ({} bytes): {:?}",
                        path.display(),
                        input.len(),
                        String::from_utf8_lossy(&input[..input.len().min(300)])
                    );
                }
            }
        }
    }
    Outcome {
        execs,
        corpus: corpus.len(),
        classes: classes.len(),
        crashes,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut target = "all".to_owned();
    let mut seconds = 30f64;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut save = false;
    let mut max_len = 4096;
    let mut replay = None;
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match a.as_str() {
            "--target" => target = value(),
            "--seconds" => seconds = value().parse().unwrap_or(seconds),
            "--seed" => seed = value().parse().unwrap_or(seed),
            "--corpus" => corpus = PathBuf::from(value()),
            "--max-len" => max_len = value().parse().unwrap_or(max_len),
            "--save" => save = true,
            "--replay" => replay = Some(PathBuf::from(value())),
            other => {
                eprintln!("unknown option {other}; see the top of cim-integrate-fuzz/src/bin/cim-fuzz.rs");
                std::process::exit(2);
            }
        }
    }
    let targets: Vec<&str> = if target == "all" {
        cim_integrate_fuzz::TARGETS.to_vec()
    } else if let Some(t) = cim_integrate_fuzz::TARGETS.iter().find(|t| **t == target) {
        vec![*t]
    } else {
        eprintln!("unknown target {target}; targets: {:?}", cim_integrate_fuzz::TARGETS);
        std::process::exit(2);
    };
    if let Some(file) = replay {
        let data = std::fs::read(&file).unwrap_or_else(|e| {
            eprintln!("{}: {e}", file.display());
            std::process::exit(2)
        });
        for t in targets {
            println!("{t}: {:?}", cim_integrate_fuzz::run(t, &data));
        }
        return;
    }
    // Panics are expected findings: keep their messages short.
    let budget = Duration::from_secs_f64(seconds / targets.len() as f64);
    println!("cim-fuzz: seed {seed}, {seconds} s over {targets:?}, max input {max_len} bytes");
    let mut failed = false;
    for t in targets {
        let o = fuzz(t, budget, seed, &corpus, save, max_len);
        println!(
            "  {t:<9} {:>9} execs ({:>7.0}/s), corpus {:>5}, outcome classes {:>4}, crashes {}",
            o.execs,
            o.execs as f64 / budget.as_secs_f64(),
            o.corpus,
            o.classes,
            o.crashes
        );
        failed |= o.crashes > 0;
    }
    if failed {
        println!("reproduce with: cim-fuzz --seed {seed} (same corpus), or --replay the saved artifact");
        std::process::exit(1);
    }
}
