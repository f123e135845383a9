//! What a captured JSON session means: its login, heartbeat, messages with their acks, the
//! deliveries of others' messages, the server's own heartbeat and the frames that carry
//! nothing — read from which frames repeat, which fields vary, and which answer echoes what.
//!
//! Frames are told apart by a *kind*: the value of the field that names them (`type`, `op`,
//! `event`, ...; the most common low-cardinality string field otherwise), or, where every
//! frame is an envelope of one key holding an object (`{"msg":{...}}`, a protobuf `oneof`
//! read as JSON), that key.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::capture::{Capture, Dir, Frame};
use super::secrets::{Secrets, is_secret_name};

/// Field names that usually name a frame's kind, most likely first.
const KIND_FIELDS: &[&str] = &[
    "type", "op", "event", "action", "cmd", "kind", "method", "t",
];
const USER_FIELDS: &[&str] = &[
    "user", "user_id", "userId", "username", "uid", "from", "sender",
];
const ROOM_FIELDS: &[&str] = &["room", "channel", "topic", "group", "room_id", "roomId"];

/// A scenario's parts as inferred, each a piece of YAML, and what was and was not found.
#[derive(Debug, Default)]
pub struct Inferred {
    /// The codec (YAML flow), if not JSON text.
    pub codec: Option<String>,
    pub login: Vec<Step>,
    pub heartbeat: Option<Heartbeat>,
    pub message: Option<Message>,
    pub replies: Vec<(String, String)>,
    pub ignore: Vec<(String, usize)>,
    /// What was inferred, one line each, for the file's comments and the terminal.
    pub found: Vec<String>,
    /// What could not be, and what it means.
    pub missing: Vec<String>,
}

#[derive(Debug)]
pub struct Step {
    /// What to send (none: the step waits for the server's greeting).
    pub send: Option<String>,
    pub expect: Option<String>,
    pub reject: Option<String>,
}

#[derive(Debug)]
pub struct Heartbeat {
    pub send: String,
    pub expect: Option<String>,
    pub interval: f64,
}

#[derive(Debug)]
pub struct Message {
    pub send: String,
    pub interval: f64,
    /// `(matcher, field)`: the ack's matcher and where it echoes the id or the sequence.
    pub ack: Option<(String, AckBy)>,
    pub delivery: Option<Delivery>,
}

#[derive(Debug)]
pub enum AckBy {
    Id(String),
    Seq(String),
    /// Acks come in the order of the messages and carry nothing of theirs.
    Order,
}

#[derive(Debug)]
pub struct Delivery {
    /// What names them, for the terminal.
    pub kind: String,
    pub matcher: String,
    pub sender: String,
    pub seq: String,
    pub ts: String,
}

/// One parsed frame.
struct Json<'a> {
    frame: &'a Frame,
    value: serde_json::Map<String, Value>,
    kind: String,
}

/// What the fields of one kind of sent frame do across its frames.
#[derive(Default)]
pub(super) struct Fields {
    pub id: Vec<String>,
    pub seq: Option<String>,
    pub ts: Option<String>,
    pub payload: Vec<String>,
}

pub(super) type Object = serde_json::Map<String, Value>;

fn objects<'a>(frames: &[&'a Json]) -> Vec<&'a Object> {
    frames.iter().map(|f| &f.value).collect()
}

/// How frames say what they are.
enum Naming {
    /// A field whose string value names the frame's kind: `{"type":"chat",...}`.
    Field(String),
    /// An envelope whose one key names the frame and holds it: `{"chat":{...}}` (protobuf's
    /// `oneof`, read as JSON).
    Envelope,
}

impl Naming {
    /// How `frames` name themselves: an envelope if every one is, else by their kind field.
    fn of(frames: &[Parsed]) -> Naming {
        let enveloped = |map: &Object| map.len() == 1 && map.values().all(Value::is_object);
        if frames.iter().all(|(_, map)| enveloped(map)) {
            Naming::Envelope
        } else {
            Naming::Field(kind_field(frames))
        }
    }

    /// A frame's kind and its fields.
    fn read(&self, mut value: Object) -> (String, Object) {
        match self {
            Naming::Field(field) => {
                let kind = value.get(field).and_then(Value::as_str).unwrap_or_default();
                (kind.to_string(), value)
            }
            Naming::Envelope => match value.iter_mut().next() {
                Some((kind, Value::Object(body))) => (kind.clone(), std::mem::take(body)),
                _ => (String::new(), value),
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            Naming::Field(field) => format!("frames are JSON objects named by `{field}`"),
            Naming::Envelope => {
                "frames are envelopes: one key names each frame and holds its fields".into()
            }
        }
    }

    /// A matcher of frames of `kind` (as YAML flow).
    fn matcher(&self, kind: &str) -> String {
        match self {
            Naming::Field(field) => {
                format!("{{pointer: /{field}, equals: {}}}", super::yaml_str(kind))
            }
            Naming::Envelope => format!("{{pointer: {}}}", super::yaml_str(&pointer(kind))),
        }
    }

    /// The JSON pointer to `field` of a frame of `kind`.
    fn pointer(&self, kind: &str, field: &str) -> String {
        match self {
            Naming::Field(_) => pointer(field),
            Naming::Envelope => format!("{}{}", pointer(kind), pointer(field)),
        }
    }

    /// A frame of `kind` whose fields are the template `body`.
    fn wrap(&self, kind: &str, body: String) -> String {
        match self {
            Naming::Field(_) => body,
            Naming::Envelope => format!("{{{}:{body}}}", Value::from(kind)),
        }
    }

    /// Whether `key` of a frame is the one naming it.
    fn names(&self, key: &str) -> bool {
        matches!(self, Naming::Field(field) if field == key)
    }
}

/// The JSON pointer to a top-level `key` (RFC 6901 escapes).
fn pointer(key: &str) -> String {
    format!("/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// Infers the scenario of `capture`'s frames (all JSON objects), secrets taken out.
pub fn infer(capture: &Capture, secrets: &mut Secrets) -> Result<Inferred, String> {
    let frames = parse(&capture.frames)?;
    let naming = Naming::of(&frames);
    let frames: Vec<Json> = frames
        .into_iter()
        .map(|(frame, value)| {
            let (kind, value) = naming.read(value);
            Json { frame, value, kind }
        })
        .collect();
    let mut inferred = Inferred::default();
    inferred.found.push(naming.describe());
    let sent: Vec<usize> = (0..frames.len())
        .filter(|&i| frames[i].frame.dir == Dir::Sent)
        .collect();
    let mut sent_counts: BTreeMap<&str, usize> = BTreeMap::new();
    for &i in &sent {
        *sent_counts.entry(frames[i].kind.as_str()).or_default() += 1;
    }
    let first_repeat = sent
        .iter()
        .copied()
        .find(|&i| sent_counts[frames[i].kind.as_str()] >= 2)
        .unwrap_or(frames.len());
    let login_sent: Vec<&Object> = frames[..first_repeat]
        .iter()
        .filter(|f| f.frame.dir == Dir::Sent)
        .map(|f| &f.value)
        .collect();
    let identity = Identity::of(&login_sent);
    let mut claimed: BTreeSet<String> = BTreeSet::new();

    // Server frames answered by a constant: the server's heartbeat.
    let mut reply_kinds = BTreeSet::new();
    for kind in received_kinds(&frames) {
        let answers: Vec<Option<&Json>> = frames
            .iter()
            .enumerate()
            .filter(|(_, f)| f.frame.dir == Dir::Received && f.kind == kind)
            .map(|(i, _)| frames[i + 1..].first().filter(|n| n.frame.dir == Dir::Sent))
            .collect();
        let texts: BTreeSet<&str> = answers
            .iter()
            .map(|a| a.map_or("", |f| f.frame.text()))
            .collect();
        if answers.len() >= 2 && texts.len() == 1 && !texts.contains("") {
            let answer = answers[0].map(|f| f.kind.clone()).unwrap_or_default();
            reply_kinds.insert(answer);
            inferred.found.push(format!(
                "the server's heartbeat: `{kind}`, answered by a constant `{}`",
                frames_text(answers[0])
            ));
            inferred.replies.push((
                naming.matcher(&kind),
                texts.into_iter().next().unwrap_or_default().to_string(),
            ));
            claimed.insert(kind);
        }
    }

    // Login: what was sent before anything repeated, each answered by the next server frame.
    for &i in sent.iter().filter(|&&i| i < first_repeat) {
        let answer = frames[i + 1..]
            .iter()
            .take_while(|f| f.frame.dir == Dir::Received)
            .find(|f| !claimed.contains(&f.kind));
        let expect = answer.map(|a| {
            claimed.insert(a.kind.clone());
            naming.matcher(&a.kind)
        });
        inferred.found.push(format!(
            "login step: `{}`{}",
            frames[i].kind,
            answer.map_or(" (no answer seen)".into(), |a| format!(
                ", answered by `{}`",
                a.kind
            ))
        ));
        inferred.login.push(Step {
            send: Some(naming.wrap(
                &frames[i].kind,
                template(&frames[i].value, &Fields::default(), &identity, secrets),
            )),
            expect,
            reject: None,
        });
    }

    // Repeated client frames: the message (its id echoed back) and the heartbeat.
    let mut repeated: Vec<&str> = sent_counts
        .iter()
        .filter(|&(k, &n)| n >= 2 && !reply_kinds.contains(*k))
        .map(|(k, _)| *k)
        .collect();
    // Acked kinds first: the heartbeat's answer is looked for among what the acks leave.
    repeated.sort_by_key(|kind| {
        let of_kind: Vec<&Json> = frames
            .iter()
            .filter(|f| f.frame.dir == Dir::Sent && f.kind == *kind)
            .collect();
        ack_of(
            &frames,
            &of_kind,
            &Fields::of(&objects(&of_kind)),
            &claimed,
            &naming,
        )
        .is_none()
    });
    for kind in repeated {
        let of_kind: Vec<&Json> = frames
            .iter()
            .filter(|f| f.frame.dir == Dir::Sent && f.kind == kind)
            .collect();
        let fields = Fields::of(&objects(&of_kind));
        let interval = median_gap(&of_kind.iter().map(|f| f.frame.at).collect::<Vec<_>>());
        let ack = ack_of(&frames, &of_kind, &fields, &claimed, &naming);
        if inferred.message.is_none() && ack.is_some() {
            let (ack_kind, by) = ack.unwrap_or_else(|| unreachable!());
            claimed.insert(ack_kind.clone());
            inferred.found.push(format!(
                "messages: `{kind}` every {interval:.2} s, acked by `{ack_kind}` ({})",
                match &by {
                    AckBy::Id(f) => format!("our id at `{f}`"),
                    AckBy::Seq(f) => format!("our sequence at `{f}`"),
                    AckBy::Order => "in order".into(),
                }
            ));
            let delivery = delivery_of(&frames, &of_kind, &fields, &identity, &claimed, &naming);
            match &delivery {
                Some(d) => {
                    claimed.insert(d.kind.clone());
                    inferred.found.push(format!(
                        "deliveries: `{}` (sender `{}`, sequence `{}`, time `{}`)",
                        d.kind, d.sender, d.seq, d.ts
                    ));
                }
                None => inferred.missing.push(
                    "deliveries: no server frame carries the sender, sequence and time of a message, so loss, duplication and delivery latency are not measured (a message is judged by its ack alone)".into(),
                ),
            }
            inferred.message = Some(Message {
                send: naming.wrap(
                    kind,
                    template(&of_kind[0].value, &fields, &identity, secrets),
                ),
                interval,
                ack: Some((naming.matcher(&ack_kind), by)),
                delivery,
            });
        } else if inferred.heartbeat.is_none() && fields.id.is_empty() {
            let answer = common_answer(&frames, kind, &claimed);
            if let Some(a) = &answer {
                claimed.insert(a.clone());
            }
            inferred.found.push(format!(
                "heartbeat: `{kind}` every {interval:.2} s{}",
                answer
                    .as_ref()
                    .map_or(", no answer of its own".into(), |a| format!(
                        ", answered by `{a}`"
                    ))
            ));
            inferred.heartbeat = Some(Heartbeat {
                send: naming.wrap(
                    kind,
                    template(&of_kind[0].value, &fields, &identity, secrets),
                ),
                expect: answer.map(|a| naming.matcher(&a)),
                interval,
            });
        } else {
            inferred.missing.push(format!(
                "`{kind}` is sent {} times but is neither the heartbeat nor an acked message: left out",
                of_kind.len()
            ));
        }
    }
    if inferred.message.is_none() {
        inferred.missing.push(
            "messages: no repeated client frame has its id echoed back by the server, so no message flow was written (users only log in and keep the heartbeat)".into(),
        );
    }
    // What the server sent after the login that nothing above explains: ignored, by kind.
    let mut rest: BTreeMap<String, usize> = BTreeMap::new();
    for f in frames[first_repeat.min(frames.len())..]
        .iter()
        .filter(|f| f.frame.dir == Dir::Received && !claimed.contains(&f.kind))
    {
        *rest.entry(f.kind.clone()).or_default() += 1;
    }
    inferred.ignore = rest
        .into_iter()
        .map(|(kind, seen)| (naming.matcher(&kind), seen))
        .collect();
    Ok(inferred)
}

fn frames_text(frame: Option<&Json>) -> String {
    frame.map_or(String::new(), |f| f.frame.text().to_string())
}

/// A frame and its JSON object.
type Parsed<'a> = (&'a Frame, serde_json::Map<String, Value>);

fn parse(frames: &[Frame]) -> Result<Vec<Parsed<'_>>, String> {
    frames
        .iter()
        .enumerate()
        .map(|(n, frame)| match serde_json::from_str(frame.text()) {
            Ok(Value::Object(map)) if !frame.is_binary() => Ok((frame, map)),
            _ => Err(format!(
                "frame {} ({}) is not a JSON object: `wsfleet record` infers JSON text protocols; this capture's {} is not read yet",
                n + 1,
                if frame.dir == Dir::Sent { "sent" } else { "received" },
                guess_protocol(frame.text(), frame.is_binary())
            )),
        })
        .collect()
}

fn guess_protocol(data: &str, binary: bool) -> &'static str {
    if binary {
        "binary protocol that is not MQTT (protobuf: pass --proto FILE --message TYPE)"
    } else if data.starts_with(|c: char| c.is_ascii_digit()) {
        "Engine.IO framing without Socket.IO's open packet"
    } else {
        "text protocol"
    }
}

/// The field naming frames: a well-known name present in most frames, else the string field
/// present in most frames with the fewest distinct values.
fn kind_field(frames: &[Parsed]) -> String {
    let mut values: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut present: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, map) in frames {
        for (key, value) in map {
            if let Some(s) = value.as_str() {
                values.entry(key).or_default().insert(s);
                *present.entry(key).or_default() += 1;
            }
        }
    }
    let common = |key: &str| present.get(key).copied().unwrap_or(0) * 5 >= frames.len() * 4;
    if let Some(known) = KIND_FIELDS.iter().find(|k| common(k)) {
        return (*known).to_string();
    }
    values
        .iter()
        .filter(|(k, _)| common(k))
        .min_by_key(|(_, v)| v.len())
        .map_or_else(|| "type".into(), |(k, _)| (*k).to_string())
}

fn received_kinds(frames: &[Json]) -> BTreeSet<String> {
    frames
        .iter()
        .filter(|f| f.frame.dir == Dir::Received)
        .map(|f| f.kind.clone())
        .collect()
}

/// The user's id and room as the login sent them.
#[derive(Default)]
pub(super) struct Identity {
    pub user: Option<String>,
    pub room: Option<String>,
}

impl Identity {
    /// The first user and room fields of these sent objects.
    pub(super) fn of(sent: &[&Object]) -> Identity {
        let find = |names: &[&str]| {
            sent.iter().find_map(|object| {
                names
                    .iter()
                    .find_map(|n| object.get(*n)?.as_str().map(str::to_string))
            })
        };
        Identity {
            user: find(USER_FIELDS),
            room: find(ROOM_FIELDS),
        }
    }
}

impl Fields {
    /// Which fields of these frames (one kind, in order) are ids, a counter, a clock.
    pub(super) fn of(frames: &[&Object]) -> Fields {
        let mut fields = Fields::default();
        let Some(first) = frames.first() else {
            return fields;
        };
        for key in first.keys() {
            let values: Vec<&Value> = frames.iter().filter_map(|f| f.get(key)).collect();
            if values.len() != frames.len() || values.windows(2).all(|w| w[0] == w[1]) {
                continue;
            }
            let numbers: Option<Vec<f64>> = values.iter().map(|v| v.as_f64()).collect();
            if let Some(numbers) = numbers {
                let increasing = numbers.windows(2).all(|w| w[1] >= w[0]);
                if increasing && numbers[0] >= 1e9 {
                    fields.ts.get_or_insert(key.clone());
                } else if numbers.windows(2).all(|w| w[1] > w[0]) {
                    fields.seq.get_or_insert(key.clone());
                }
                continue;
            }
            let distinct: BTreeSet<String> = values.iter().map(|v| v.to_string()).collect();
            if values.iter().all(|v| v.is_string()) {
                if distinct.len() == values.len() && !is_secret_name(key) {
                    fields.id.push(key.clone());
                } else {
                    fields.payload.push(key.clone());
                }
            }
        }
        // Of several varying strings, the one named like an id is the message id.
        fields.id.sort_by_key(|key| !named_like_id(key));
        fields
    }
}

/// `id`, `msg_id`, `messageId`, `uuid`, `mid`: a name that says it identifies.
fn named_like_id(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "mid" || key.ends_with("id") || key.contains("uuid")
}

/// The ack of `sent` (one kind): the server kind whose frames carry each sent id (or
/// sequence) in one field.
fn ack_of(
    frames: &[Json],
    sent: &[&Json],
    fields: &Fields,
    claimed: &BTreeSet<String>,
    naming: &Naming,
) -> Option<(String, AckBy)> {
    let values = |key: &str| -> BTreeSet<String> {
        sent.iter()
            .filter_map(|f| f.value.get(key))
            .map(Value::to_string)
            .collect()
    };
    for kind in received_kinds(frames)
        .into_iter()
        .filter(|k| !claimed.contains(k))
    {
        let answers: Vec<&Json> = frames
            .iter()
            .filter(|f| f.frame.dir == Dir::Received && f.kind == kind)
            .collect();
        let echoes = |ours: &BTreeSet<String>| -> Option<String> {
            answers[0]
                .value
                .keys()
                .find(|key| {
                    let theirs: BTreeSet<String> = answers
                        .iter()
                        .filter_map(|a| a.value.get(*key))
                        .map(Value::to_string)
                        .collect();
                    theirs.is_subset(ours) && theirs.len() + 1 >= ours.len()
                })
                .cloned()
        };
        // An ack answers each message once: as many answers as messages.
        // (the capture may end before the last one's).
        if answers.len() > sent.len() || answers.len() + 1 < sent.len() {
            continue;
        }
        for id in &fields.id {
            if let Some(field) = echoes(&values(id)) {
                let at = naming.pointer(&kind, &field);
                return Some((kind, AckBy::Id(at)));
            }
        }
        if let Some(seq) = &fields.seq
            && let Some(field) = echoes(&values(seq))
        {
            let at = naming.pointer(&kind, &field);
            return Some((kind, AckBy::Seq(at)));
        }
    }
    None
}

/// The deliveries: a server kind carrying a sender, and our messages' sequence and time
/// values (a room echoes one's own messages) or fields of those names.
fn delivery_of(
    frames: &[Json],
    sent: &[&Json],
    fields: &Fields,
    identity: &Identity,
    claimed: &BTreeSet<String>,
    naming: &Naming,
) -> Option<Delivery> {
    let values = |key: &Option<String>| -> BTreeSet<String> {
        key.iter()
            .flat_map(|k| sent.iter().filter_map(|f| f.value.get(k)))
            .map(Value::to_string)
            .collect()
    };
    let (seqs, times) = (values(&fields.seq), values(&fields.ts));
    for kind in received_kinds(frames)
        .into_iter()
        .filter(|k| !claimed.contains(k))
    {
        let of_kind: Vec<&Json> = frames
            .iter()
            .filter(|f| f.frame.dir == Dir::Received && f.kind == kind)
            .collect();
        let first = &of_kind[0].value;
        let carrying = |ours: &BTreeSet<String>, names: &[&str]| {
            first
                .keys()
                .filter(|k| !naming.names(k))
                .find(|key| {
                    let theirs: Vec<String> = of_kind
                        .iter()
                        .filter_map(|f| f.value.get(*key))
                        .map(Value::to_string)
                        .collect();
                    (!ours.is_empty()
                        && !theirs.is_empty()
                        && theirs.iter().all(|v| ours.contains(v)))
                        || names.contains(&key.as_str())
                })
                .cloned()
        };
        let user: BTreeSet<String> = identity
            .user
            .iter()
            .map(|u| Value::from(u.as_str()).to_string())
            .collect();
        let sender = carrying(&user, USER_FIELDS);
        let seq = carrying(&seqs, &["seq", "sequence", "counter", "n"]);
        let ts = carrying(&times, &["ts", "time", "timestamp", "sent_at"]);
        if let (Some(sender), Some(seq), Some(ts)) = (sender, seq, ts) {
            return Some(Delivery {
                matcher: naming.matcher(&kind),
                sender: naming.pointer(&kind, &sender),
                seq: naming.pointer(&kind, &seq),
                ts: naming.pointer(&kind, &ts),
                kind,
            });
        }
    }
    None
}

/// The sender, sequence and time fields of `object`, a message someone else sent (a room
/// passes them on): a field naming a user, and our messages' sequence and time fields.
pub(super) fn carried(object: &Object, fields: &Fields) -> Option<(String, String, String)> {
    let (seq, ts) = (fields.seq.as_ref()?, fields.ts.as_ref()?);
    let sender = USER_FIELDS
        .iter()
        .find(|u| object.get(**u).is_some_and(Value::is_string))?;
    (object.contains_key(seq) && object.contains_key(ts))
        .then(|| ((*sender).to_string(), seq.clone(), ts.clone()))
}

/// The kind of server frame that follows each frame of `kind`, when one kind always does.
fn common_answer(frames: &[Json], kind: &str, claimed: &BTreeSet<String>) -> Option<String> {
    let mut answers: BTreeMap<&str, usize> = BTreeMap::new();
    let mut asked = 0;
    for (i, f) in frames.iter().enumerate() {
        if f.frame.dir != Dir::Sent || f.kind != kind {
            continue;
        }
        asked += 1;
        let next = frames[i + 1..]
            .iter()
            .find(|n| n.frame.dir == Dir::Received && !claimed.contains(&n.kind));
        if let Some(next) = next {
            *answers.entry(next.kind.as_str()).or_default() += 1;
        }
    }
    answers
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .filter(|&(_, n)| n * 5 >= asked * 4)
        .map(|(k, _)| k.to_string())
}

/// The median time between consecutive frames, in seconds.
pub(super) fn median_gap(times: &[f64]) -> f64 {
    let mut gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_by(f64::total_cmp);
    gaps.get(gaps.len() / 2).copied().unwrap_or(1.0)
}

/// A sent frame as a template: ids, counter and clock replaced by `{{msg_id}}`, `{{seq}}`,
/// `{{ts}}`; other varying strings by `{{payload}}`; the user and room by `{{user_id}}`
/// and `{{room}}`; secrets by their variables.
pub(super) fn template(
    frame: &serde_json::Map<String, Value>,
    fields: &Fields,
    identity: &Identity,
    secrets: &mut Secrets,
) -> String {
    const RAW: &str = "@@wsfleet-raw:";
    let mut out = serde_json::Map::new();
    for (key, value) in frame {
        let placed = if fields.id.first() == Some(key) {
            Value::from("{{msg_id}}")
        } else if fields.seq.as_ref() == Some(key) {
            Value::from(format!("{RAW}seq"))
        } else if fields.ts.as_ref() == Some(key) {
            Value::from(format!("{RAW}ts"))
        } else if fields.payload.contains(key) || fields.id.contains(key) {
            Value::from("{{payload}}")
        } else {
            match value.as_str() {
                Some(s) if is_secret_name(key) => {
                    Value::from(secrets.take(key, s, &format!("the `{key}` field of a frame")))
                }
                Some(s) if identity.user.as_deref() == Some(s) => Value::from("{{user_id}}"),
                Some(s) if identity.room.as_deref() == Some(s) => Value::from("{{room}}"),
                _ => value.clone(),
            }
        };
        out.insert(key.clone(), placed);
    }
    let text = Value::Object(out).to_string();
    text.replace(&format!("\"{RAW}seq\""), "{{seq}}")
        .replace(&format!("\"{RAW}ts\""), "{{ts}}")
}
