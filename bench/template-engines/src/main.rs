//! Allocations and time per render of the im message template: minijinja against a
//! segment list like wsfleet's compiled templates (push_str per segment, one output String).
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}
#[global_allocator]
static A: Counting = Counting;

#[derive(serde::Serialize)]
struct Values<'a> {
    room: &'a str,
    msg_id: &'a str,
    seq: u64,
    ts: u64,
    payload: &'a str,
}

const TEMPLATE: &str = r#"{"type":"msg","room":"{{room}}","id":"{{msg_id}}","seq":{{seq}},"ts":{{ts}},"body":"{{payload}}"}"#;

enum Seg {
    Text(&'static str),
    Room,
    Id,
    Seq,
    Ts,
    Payload,
}

fn main() {
    let n = 200_000u64;
    let payload = "x".repeat(64);
    let mut env = minijinja::Environment::new();
    env.add_template("m", TEMPLATE).unwrap();
    let t = env.get_template("m").unwrap();
    // minijinja
    let (a0, t0) = (ALLOCS.load(Ordering::Relaxed), Instant::now());
    let mut total = 0usize;
    for seq in 0..n {
        let id = format!("u7-{seq}");
        let out = t
            .render(Values {
                room: "room-0",
                msg_id: &id,
                seq,
                ts: 1234567 + seq,
                payload: &payload,
            })
            .unwrap();
        total += out.len();
    }
    let (mj_allocs, mj_time) = (ALLOCS.load(Ordering::Relaxed) - a0, t0.elapsed());
    // segments
    let segs = vec![
        Seg::Text(r#"{"type":"msg","room":""#),
        Seg::Room,
        Seg::Text(r#"","id":""#),
        Seg::Id,
        Seg::Text(r#"","seq":"#),
        Seg::Seq,
        Seg::Text(r#","ts":"#),
        Seg::Ts,
        Seg::Text(r#","body":""#),
        Seg::Payload,
        Seg::Text(r#""}"#),
    ];
    use std::fmt::Write;
    let (a1, t1) = (ALLOCS.load(Ordering::Relaxed), Instant::now());
    for seq in 0..n {
        let mut out = String::with_capacity(160);
        for s in &segs {
            match s {
                Seg::Text(t) => out.push_str(t),
                Seg::Room => out.push_str("room-0"),
                Seg::Id => {
                    out.push_str("u7-");
                    let _ = write!(out, "{seq}");
                }
                Seg::Seq => {
                    let _ = write!(out, "{seq}");
                }
                Seg::Ts => {
                    let _ = write!(out, "{}", 1234567 + seq);
                }
                Seg::Payload => out.push_str(&payload),
            }
        }
        total += out.len();
    }
    let (sg_allocs, sg_time) = (ALLOCS.load(Ordering::Relaxed) - a1, t1.elapsed());
    println!(
        "minijinja: {:.2} allocations/render (1 of them the msg_id the caller formats), {:.0} ns/render",
        mj_allocs as f64 / n as f64,
        mj_time.as_nanos() as f64 / n as f64
    );
    println!(
        "segments:  {:.2} allocations/render, {:.0} ns/render  ({total})",
        sg_allocs as f64 / n as f64,
        sg_time.as_nanos() as f64 / n as f64
    );
}
