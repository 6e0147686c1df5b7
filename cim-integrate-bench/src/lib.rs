//! Shared pieces of the benchmark runner (`src/main.rs`) and its child processes (`src/bin/`).
#![warn(missing_docs)]

pub mod compare;
pub mod server;

use cim_integrate::domain_event;

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A figure as the runner prints it: from 100 up, whole and grouped in thousands
/// (`1,234,567`); below, with two decimals; `-` for a side not measured (`NaN`).
pub fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        return "-".into();
    }
    if v.abs() >= 100.0 {
        let digits = format!("{:.0}", v.abs());
        let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
        if v < 0.0 {
            out.push('-');
        }
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else {
        format!("{v:.2}")
    }
}

/// The event every throughput benchmark publishes and handles (~190 bytes of JSON).
#[domain_event(subject = "document.created", version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentCreated {
    /// The document.
    pub document_id: uuid::Uuid,
    /// Its title.
    pub title: String,
    /// Who created it.
    pub author: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What a fan-out handler publishes per handled event (`audit.recorded`).
#[domain_event(subject = "audit.recorded", version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecorded {
    /// The document.
    pub document_id: uuid::Uuid,
    /// Which of the handler's publishes this is.
    pub n: u32,
}

/// The same payload as a plain serde struct, for the hand-written baselines.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RawDocumentCreated {
    /// `"1.0"`.
    pub version: String,
    /// The document.
    pub document_id: uuid::Uuid,
    /// Its title.
    pub title: String,
    /// Who created it.
    pub author: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The `i`-th benchmark event. Its document id is made from `i` (a UUID of version 7's layout),
/// not drawn: `Uuid::now_v7` makes a `getrandom` system call per id, a cost both sides of a row
/// would pay, outside the path measured, that would pull every ratio toward 1.
pub fn event(i: u64) -> DocumentCreated {
    DocumentCreated {
        document_id: uuid::Uuid::from_u64_pair(0x0192_f3c4_5d6e_7f80, 0x8000_0000_0000_0000 | i),
        title: format!("Architecture decision record number {i}"),
        author: "alice@example.org".into(),
        size: i * 7,
    }
}

/// The `i`-th benchmark event as the plain struct.
pub fn raw_event(i: u64) -> RawDocumentCreated {
    let e = event(i);
    RawDocumentCreated {
        version: "1.0".into(),
        document_id: e.document_id,
        title: e.title,
        author: e.author,
        size: e.size,
    }
}

/// `(VmHWM, VmRSS)` of this process in KiB, from `/proc/self/status` (Linux); `None` elsewhere.
pub fn rss_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// A global allocator that counts allocations (process-wide, every thread), for allocations per
/// message: install it with `#[global_allocator]` and read [`allocations`] before and after.
pub struct CountingAlloc;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Allocations made so far by a process whose global allocator is [`CountingAlloc`].
pub fn allocations() -> u64 {
    ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}
