//! [`Scenario::compile`]: a spec turned, once, into the templates, matchers and plans every
//! user shares; each mistake named by its place in `scenario:`.

use std::path::Path;

use super::credentials::{Credentials, read_credentials};
use super::matcher::Matcher;
use super::spec::{Builtin, ScenarioSpec};
use super::template::{Template, Values};
use super::*;
use crate::codec::Codec;
use crate::load::MAX_ROOM_SIZE;
use crate::topology::{MAX_ROOMS_PER_USER, Rooms, Topology};

impl Scenario {
    /// Compiles a spec; relative credential paths are read from `base_dir`.
    pub fn compile(spec: &ScenarioSpec, base_dir: &Path) -> Result<Scenario, ScenarioError> {
        if let Some(name) = &spec.extends {
            return Err(at("extends")(format!(
                "unknown built-in scenario `{name}`; built-ins are {}",
                Builtin::names()
            )));
        }
        let credentials = match &spec.credentials {
            Some(path) => read_credentials(&base_dir.join(path)).map_err(at("credentials"))?,
            None => Credentials::default(),
        };
        let columns: template::Names = credentials.columns.iter().cloned().collect();
        let mut custom = columns.clone();
        let mut var_specs = Vec::new();
        for (name, text) in &spec.vars {
            if spec.inherited_vars.contains(name) && credentials.columns.contains(name) {
                continue; // the user's column replaces the built-in's default
            }
            if template::BUILTINS.contains(&name.as_str()) || custom.contains(name) {
                return Err(at(format!("vars.{name}"))(format!(
                    "`{name}` is already a variable (built-in or credentials column)"
                )));
            }
            custom.push(name.clone());
            var_specs.push((name, text));
        }
        // A var may use the built-ins, credential columns and other vars (not itself).
        let vars = var_specs
            .iter()
            .map(|(name, text)| {
                Template::compile(text, &custom).map_err(at(format!("vars.{name}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let first_var = credentials.columns.len();
        let mut var_order = render_order(&vars, first_var).map_err(|cycle| {
            let names: Vec<&str> = cycle.iter().map(|&v| var_specs[v].0.as_str()).collect();
            at(format!("vars.{}", names[0]))(format!(
                "the vars use one another in a circle: {}",
                names.join(" -> ")
            ))
        })?;
        // A var that uses per-message values (or another such var) is rendered where it is
        // used, each time; the others once per connection.
        let mut per_message = vec![false; vars.len()];
        for &var in &var_order {
            let uses = vars[var].uses_message_vars()
                || vars[var]
                    .customs()
                    .any(|c| c.checked_sub(first_var).is_some_and(|v| per_message[v]));
            if uses {
                per_message[var] = true;
                let (name, text) = var_specs[var];
                let inline =
                    Template::compile(text, &custom).map_err(at(format!("vars.{name}")))?;
                custom.set_inline(name, inline);
            }
        }
        var_order.retain(|&var| !per_message[var]);
        // Tokens come after the vars: their claims may use any per-connection value.
        let mut tokens = Vec::new();
        for (name, token) in &spec.tokens {
            if template::BUILTINS.contains(&name.as_str()) || custom.contains(name) {
                return Err(at(format!("tokens.{name}"))(format!(
                    "`{name}` is already a variable (built-in, credentials column or var)"
                )));
            }
            let slot = first_var + vars.len() + tokens.len();
            tokens.push(
                tokens::Token::compile(name, token, slot, &custom, base_dir)
                    .map_err(at(format!("tokens.{name}")))?,
            );
            custom.push(name.clone());
        }
        let compile =
            |field: String, text: &str| Template::compile(text, &custom).map_err(at(field));
        // Matchers may compare a field with the user's own values (`equals: "{{user_id}}"`):
        // each such template is rendered once per connection.
        let mine = std::cell::RefCell::new(Vec::new());
        let matcher = |field: String, spec: &MatcherSpec| {
            Matcher::compile_with(spec, &mut |text| {
                let template = Template::compile(text, &custom)?;
                if template.uses_message_vars() {
                    return Err(format!(
                        "`equals: {text}` may use the user's own variables, not per-message ones"
                    ));
                }
                let mut mine = mine.borrow_mut();
                mine.push(template);
                Ok(mine.len() - 1)
            })
            .map_err(at(field))
        };

        let url = spec
            .url
            .as_deref()
            .map(|u| compile("url".into(), u))
            .transpose()?;
        let headers_at = |field: &str, headers: &std::collections::BTreeMap<String, String>| {
            headers
                .iter()
                .map(|(name, value)| {
                    http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        at(format!("{field}.{name}"))("not a valid HTTP header name".into())
                    })?;
                    Ok((name.clone(), compile(format!("{field}.{name}"), value)?))
                })
                .collect::<Result<Vec<_>, ScenarioError>>()
        };
        let headers = headers_at("headers", &spec.headers)?;
        let publish = spec
            .publish
            .as_ref()
            .map(|publish| {
                let method = match publish.method.to_ascii_uppercase().as_str() {
                    "POST" => http::Method::POST,
                    "PUT" => http::Method::PUT,
                    other => {
                        return Err(at("publish.method")(format!("POST or PUT, got `{other}`")));
                    }
                };
                Ok(Publish {
                    url: compile("publish.url".into(), &publish.url)?,
                    method,
                    headers: headers_at("publish.headers", &publish.headers)?,
                })
            })
            .transpose()?;
        let login = spec
            .login
            .iter()
            .enumerate()
            .map(|(i, step)| {
                if step.send.is_none() && step.expect.is_none() {
                    return Err(at(format!("login[{i}]"))(
                        "a step needs `send`, `expect`, or both".into(),
                    ));
                }
                crate::load::check_duration(
                    "timeout",
                    step.timeout,
                    Duration::from_millis(1),
                    crate::load::MAX_TIMEOUT,
                    None,
                )
                .map_err(|err| at(format!("login[{i}].timeout"))(err.problem))?;
                Ok(Step {
                    send: step
                        .send
                        .as_deref()
                        .map(|s| compile(format!("login[{i}].send"), s))
                        .transpose()?,
                    expect: step
                        .expect
                        .as_ref()
                        .map(|m| matcher(format!("login[{i}].expect"), m))
                        .transpose()?,
                    reject: step
                        .reject
                        .as_ref()
                        .map(|m| matcher(format!("login[{i}].reject"), m))
                        .transpose()?,
                    timeout: step.timeout,
                })
            })
            .collect::<Result<_, _>>()?;
        let heartbeat = spec
            .heartbeat
            .as_ref()
            .map(|hb| {
                Ok(AppHeartbeat {
                    send: compile("heartbeat.send".into(), &hb.send)?,
                    expect: hb
                        .expect
                        .as_ref()
                        .map(|m| matcher("heartbeat.expect".into(), m))
                        .transpose()?,
                })
            })
            .transpose()?;
        let refresh = spec
            .refresh
            .as_ref()
            .map(|r| {
                crate::load::check_duration(
                    "every",
                    r.every,
                    Duration::from_secs(1),
                    Duration::from_secs(366 * 86_400),
                    None,
                )
                .map_err(|err| at("refresh.every")(err.problem))?;
                Ok(tokens::Refresh {
                    every: r.every,
                    send: compile("refresh.send".into(), &r.send)?,
                    expect: r
                        .expect
                        .as_ref()
                        .map(|m| matcher("refresh.expect".into(), m))
                        .transpose()?,
                    timeout: r.timeout,
                })
            })
            .transpose()?;
        let message = spec
            .message
            .as_ref()
            .map(|m| {
                Ok(MessagePlan {
                    send: compile("message.send".into(), &m.send)?,
                    ack: m
                        .ack
                        .as_ref()
                        .map(|a| {
                            Ok(Ack {
                                matcher: matcher("message.ack.match".into(), &a.matcher)?,
                                key: match (&a.id, &a.seq) {
                                    (Some(id), None) => AckKey::Id(id.clone()),
                                    (None, Some(seq)) => AckKey::Seq(seq.clone()),
                                    (None, None) => AckKey::Oldest,
                                    (Some(_), Some(_)) => {
                                        return Err(at("message.ack")(
                                            "give `id` or `seq` (or neither, for acks in order), not both"
                                                .into(),
                                        ));
                                    }
                                },
                            })
                        })
                        .transpose()?,
                    delivery: m
                        .delivery
                        .as_ref()
                        .map(|d| {
                            Ok(DeliveryPlan {
                                matcher: matcher("message.delivery.match".into(), &d.matcher)?,
                                sender: d.sender.clone(),
                                seq: d.seq.clone(),
                                ts: d.ts.clone(),
                                cursor: d.cursor.clone().unwrap_or_default(),
                            })
                        })
                        .transpose()?,
                })
            })
            .transpose()?;
        if spec.room_size == 0 {
            return Err(at("room_size")("must be at least 1".into()));
        }
        if !(1..=MAX_ROOMS_PER_USER).contains(&spec.rooms_per_user) {
            return Err(at("rooms_per_user")(format!(
                "must be between 1 and {MAX_ROOMS_PER_USER}, got {}",
                spec.rooms_per_user
            )));
        }
        let rooms = if spec.rooms.is_empty() {
            Rooms::Uniform {
                rooms_per_user: spec.rooms_per_user,
            }
        } else {
            if spec.rooms_per_user != 1 {
                return Err(at("rooms_per_user")(
                    "a `rooms` table says how many rooms of each size (`per_user`); leave `rooms_per_user` out".into(),
                ));
            }
            if let Some(row) = spec.rooms.iter().position(|r| r.size > MAX_ROOM_SIZE) {
                return Err(at(format!("rooms[{row}].size"))(format!(
                    "must be at most {MAX_ROOM_SIZE}, got {}",
                    spec.rooms[row].size
                )));
            }
            let rows: Vec<(u32, u32)> = spec.rooms.iter().map(|r| (r.size, r.per_user)).collect();
            Rooms::Table(Topology::table(&rows).map_err(at("rooms"))?)
        };
        let replies = spec
            .replies
            .iter()
            .enumerate()
            .map(|(i, reply)| {
                let matcher = matcher(format!("replies[{i}].match"), &reply.matcher)?;
                // A reply may use the named captures of its regex, after the scenario's vars.
                let mut names = custom.clone();
                if let Matcher::Regex(regex) = &matcher {
                    names.extend(regex.capture_names().flatten().map(str::to_string));
                }
                let send = Template::compile(&reply.send, &names)
                    .map_err(at(format!("replies[{i}].send")))?;
                Ok(Reply { matcher, send })
            })
            .collect::<Result<Vec<_>, ScenarioError>>()?;
        let ignore = spec
            .ignore
            .iter()
            .enumerate()
            .map(|(i, m)| matcher(format!("ignore[{i}]"), m))
            .collect::<Result<Vec<_>, _>>()?;
        let reading = reading::Reading::compile(
            heartbeat.as_ref(),
            refresh.as_ref(),
            message.as_ref(),
            &replies,
            &ignore,
        )
        .map_err(|problem| match problem.split_once(": ") {
            Some((field, problem)) => at(field)(problem.to_string()),
            None => at("message")(problem),
        })?;
        let codec = Codec::compile(&spec.codec, base_dir).map_err(at("codec"))?;
        let framing = match (spec.framing, codec.framing()) {
            (Some(_), Some(_)) => {
                return Err(at("framing")(
                    "this codec frames its own packets; leave `framing` out".into(),
                ));
            }
            (mine, theirs) => mine.or(theirs),
        };
        let scenario = Scenario {
            url,
            headers,
            publish,
            user_id_column: credentials.columns.iter().position(|c| c == "user_id"),
            credentials,
            vars,
            var_order,
            tokens,
            refresh,
            mine: mine.into_inner(),
            login,
            heartbeat,
            message,
            reading,
            room_size: spec.room_size,
            rooms,
            codec,
            framing,
            group: None,
        };
        scenario.check_encoding(&replies)?;
        Ok(scenario)
    }

    /// Every send template, rendered for user 0 (captures of replies as `1`), must encode:
    /// a template the codec cannot encode is a config error, not a failure per user later.
    fn check_encoding(&self, replies: &[Reply]) -> Result<(), ScenarioError> {
        // Claims that give no JSON object for user 0 never will: a config error.
        let mut identity = self.identity(0, self.topology(self.room_size));
        for token in &self.tokens {
            token
                .mint(&identity.values("", 0, 0, 0))
                .map_err(at(format!("tokens.{}", token.name)))?;
        }
        self.mint_tokens(&mut identity);
        let values = identity.values("ws://127.0.0.1/", 1, 1, 1);
        let check = |field: String, text: String| {
            self.codec
                .encode(text)
                .map(drop)
                .map_err(|err| at(field)(format!("the codec cannot encode it: {err}")))
        };
        for (i, step) in self.login.iter().enumerate() {
            if let Some(send) = &step.send {
                check(format!("login[{i}].send"), send.render(&values))?;
            }
        }
        if let Some(heartbeat) = &self.heartbeat {
            check("heartbeat.send".into(), heartbeat.send.render(&values))?;
        }
        if let Some(message) = &self.message {
            check("message.send".into(), message.send.render(&values))?;
        }
        if let Some(refresh) = &self.refresh {
            check("refresh.send".into(), refresh.send.render(&values))?;
        }
        for (i, reply) in replies.iter().enumerate() {
            let mut custom = identity.custom.to_vec();
            custom.resize(custom.len() + 16, "1".into());
            let values = Values {
                custom: &custom,
                last_seen: "",
                ..identity.values("ws://127.0.0.1/", 1, 1, 1)
            };
            check(format!("replies[{i}].send"), reply.send.render(&values))?;
        }
        Ok(())
    }
}

/// The order to render `vars` in (a var after those it uses: custom variables from
/// `first_var` on are vars), or the vars of a circle, the first again at its end.
fn render_order(vars: &[Template], first_var: usize) -> Result<Vec<usize>, Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        var: usize,
        vars: &[Template],
        first_var: usize,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Result<(), Vec<usize>> {
        match marks[var] {
            Mark::Done => return Ok(()),
            Mark::Open => {
                let start = path.iter().position(|&v| v == var).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(var);
                return Err(cycle);
            }
            Mark::New => {}
        }
        marks[var] = Mark::Open;
        path.push(var);
        for used in vars[var].customs().filter_map(|c| c.checked_sub(first_var)) {
            visit(used, vars, first_var, marks, path, order)?;
        }
        path.pop();
        marks[var] = Mark::Done;
        order.push(var);
        Ok(())
    }
    let mut marks = vec![Mark::New; vars.len()];
    let mut order = Vec::with_capacity(vars.len());
    for var in 0..vars.len() {
        visit(
            var,
            vars,
            first_var,
            &mut marks,
            &mut Vec::new(),
            &mut order,
        )?;
    }
    Ok(order)
}
