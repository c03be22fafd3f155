//! The command line's arguments, parsed by hand: three commands with a few flags each do not
//! need an argument parser's compile time.
//!
//! Flags may come anywhere after the command, as `--flag value` or `--flag=value`; an unknown
//! flag, a missing value or a missing argument is an [`Error`] that names it, and `--help`
//! anywhere prints [`USAGE`].

use std::path::PathBuf;
use std::time::Duration;

use meshless::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use meshless::ChannelBuilder;

use crate::error::Error;

/// What `meshless --help` prints.
pub(crate) const USAGE: &str = "\
meshless: look at and talk to the instances of a meshless service, without a proxy or a broker

USAGE:
    meshless status <target> [--json] [--watch [--interval 2s]] [--timeout 5s]
    meshless tail <target> <package.Service/Event> [--from oldest|live] [--group NAME]
                  [--descriptor-set FILE] [--count N] [--timeout 5s]
    meshless call <target> <package.Service/Method> '<json>' [--descriptor-set FILE]
                  [--timeout 10s]
    Every command also takes --header 'name: value' (repeatable): sent with every call, for
    servers whose layers want a token.

COMMANDS:
    status   Asks every instance of <target> for its admin view (meshless.admin.v1.Admin,
             served with Server::admin(true)) and prints one report: instances, event RPCs,
             consumer groups with their lag per producer, ejected instances.
               --json             one JSON object instead of tables
               --watch            refresh in place until Ctrl-C (every --interval, default 2s)
               --timeout D        how long DNS and each instance may take (default 5s)
    tail     Subscribes to the event RPC on every instance of <target> and prints one JSON
             object per event: {\"instance\", \"sequence\", \"key\", \"event\"}, in order per
             producer. The event is decoded with descriptors from gRPC reflection
             (Server::reflection(true)) or from --descriptor-set.
               --from oldest|live where to start (default oldest: every retained event)
               --group NAME       join consumer group NAME and acknowledge each event printed
               --count N          stop after N events
               --descriptor-set F a FileDescriptorSet (protoc --include_imports -o F, buf build -o F)
               --timeout D        how long DNS, reflection and subscribing may take (default 5s)
    call     Sends one request, written in JSON, to one instance of <target> (picked by the
             balancer) and prints the response as JSON. A failed call prints
             `error: CODE: message` and exits with 1.
               --descriptor-set F as for tail
               --timeout D        the call's deadline (default 10s)

TARGETS:
    dns:[//dns-server[:port]/]host:port     A/AAAA records of host
    dns+srv:[//dns-server[:port]/]name      SRV records of name (Consul: users.service.consul)
    ipv4:10.0.0.1:50051,10.0.0.2:50051      fixed addresses (ipv6:[fd00::1]:50051 likewise)
    http://host:port                        one host

Durations: 500ms, 2s, 1m, up to 8760h (a year).
Exit code: 0 on success, 1 on any error (2 for bad arguments).
";

/// One parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// `--help`, `-h`, `help`, or no arguments.
    Help,
    /// `--version`, `-V`.
    Version,
    /// `meshless status`.
    Status(StatusArgs),
    /// `meshless tail`.
    Tail(TailArgs),
    /// `meshless call`.
    Call(CallArgs),
}

/// `meshless status <target> [--json] [--watch [--interval D]] [--timeout D]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StatusArgs {
    pub(crate) target: String,
    pub(crate) json: bool,
    pub(crate) watch: bool,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) headers: Headers,
}

/// Where `tail` starts on each producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum From {
    /// Every event the producer still retains, then live ones.
    Oldest,
    /// Only events published from now on.
    Live,
}

/// `meshless tail <target> <package.Service/Event> ...`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TailArgs {
    pub(crate) target: String,
    pub(crate) method: MethodName,
    pub(crate) from: From,
    pub(crate) group: Option<String>,
    pub(crate) descriptor_set: Option<PathBuf>,
    pub(crate) count: Option<u64>,
    pub(crate) timeout: Duration,
    pub(crate) headers: Headers,
}

/// `meshless call <target> <package.Service/Method> '<json>' ...`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CallArgs {
    pub(crate) target: String,
    pub(crate) method: MethodName,
    pub(crate) json: String,
    pub(crate) descriptor_set: Option<PathBuf>,
    pub(crate) timeout: Duration,
    pub(crate) headers: Headers,
}

/// `--header 'name: value'`s: metadata sent with every call (a bearer token for servers whose
/// layers want one, the admin service included).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Headers(Vec<(AsciiMetadataKey, AsciiMetadataValue)>);

impl Headers {
    fn parse(given: Vec<String>) -> Result<Self, Error> {
        let mut headers = Vec::with_capacity(given.len());
        for header in given {
            let bad = || {
                Error::usage(format!(
                    "--header takes 'name: value' with an ASCII name and value, not `{header}`"
                ))
            };
            let (name, value) = header.split_once(':').ok_or_else(bad)?;
            let name: AsciiMetadataKey = name.trim().parse().map_err(|_| bad())?;
            let value: AsciiMetadataValue = value.trim().parse().map_err(|_| bad())?;
            headers.push((name, value));
        }
        Ok(Self(headers))
    }

    /// `builder` sending these headers with every call.
    pub(crate) fn apply(&self, builder: ChannelBuilder) -> ChannelBuilder {
        self.0.iter().fold(builder, |builder, (name, value)| {
            builder.metadata(name.clone(), value.clone())
        })
    }
}

/// `package.Service/Method`, also accepted as `/package.Service/Method` and
/// `package.Service.Method` (grpcurl's form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MethodName {
    /// `package.Service`.
    pub(crate) service: String,
    /// `Method`.
    pub(crate) method: String,
}

impl MethodName {
    fn parse(text: &str) -> Result<Self, Error> {
        let trimmed = text.strip_prefix('/').unwrap_or(text);
        let split = trimmed
            .rsplit_once('/')
            .or_else(|| trimmed.rsplit_once('.'));
        match split {
            Some((service, method))
                if !service.is_empty() && !method.is_empty() && !method.contains('/') =>
            {
                Ok(Self {
                    service: service.to_owned(),
                    method: method.to_owned(),
                })
            }
            _ => Err(Error::usage(format!(
                "`{text}` is not a method: write it as package.Service/Method"
            ))),
        }
    }

    /// The gRPC path: `/package.Service/Method`.
    pub(crate) fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

impl std::fmt::Display for MethodName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.service, self.method)
    }
}

/// Parses the arguments after the program's name.
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, Error> {
    let args: Vec<String> = args.into_iter().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help);
    }
    if args.iter().any(|a| a == "--version" || a == "-V") {
        return Ok(Command::Version);
    }
    let Some((command, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    let mut parsed = Parsed::split(command, rest)?;
    let headers = Headers::parse(parsed.take_all("--header"))?;
    let command = match command.as_str() {
        "help" => Command::Help,
        "status" => {
            let [target] = parsed.positionals("status", ["<target>"])?;
            let watch = parsed.switch("--watch");
            let interval = parsed.duration("--interval")?;
            if interval.is_some() && !watch {
                return Err(Error::usage("--interval goes with --watch"));
            }
            Command::Status(StatusArgs {
                target,
                json: parsed.switch("--json"),
                watch,
                interval: interval.unwrap_or(Duration::from_secs(2)),
                timeout: parsed
                    .duration("--timeout")?
                    .unwrap_or(Duration::from_secs(5)),
                headers: headers.clone(),
            })
        }
        "tail" => {
            let [target, method] =
                parsed.positionals("tail", ["<target>", "<package.Service/Event>"])?;
            let from = match parsed.value("--from").as_deref() {
                None | Some("oldest") => From::Oldest,
                Some("live") => From::Live,
                Some(other) => {
                    return Err(Error::usage(format!(
                        "--from takes oldest or live, not `{other}`"
                    )))
                }
            };
            let count = match parsed.value("--count") {
                None => None,
                Some(count) => Some(count.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(
                    || Error::usage(format!("--count takes a positive number, not `{count}`")),
                )?),
            };
            let group = parsed.value("--group");
            if group.as_deref() == Some("") {
                return Err(Error::usage("--group takes a non-empty name"));
            }
            Command::Tail(TailArgs {
                target,
                method: MethodName::parse(&method)?,
                from,
                group,
                descriptor_set: parsed.value("--descriptor-set").map(PathBuf::from),
                count,
                timeout: parsed
                    .duration("--timeout")?
                    .unwrap_or(Duration::from_secs(5)),
                headers: headers.clone(),
            })
        }
        "call" => {
            let [target, method, json] =
                parsed.positionals("call", ["<target>", "<package.Service/Method>", "'<json>'"])?;
            Command::Call(CallArgs {
                target,
                method: MethodName::parse(&method)?,
                json,
                descriptor_set: parsed.value("--descriptor-set").map(PathBuf::from),
                timeout: parsed
                    .duration("--timeout")?
                    .unwrap_or(Duration::from_secs(10)),
                headers: headers.clone(),
            })
        }
        other => {
            return Err(Error::usage(format!(
            "unknown command `{other}`: the commands are status, tail and call (meshless --help)"
        )))
        }
    };
    parsed.finish(command)
}

/// A command's arguments, split into positionals and flags, each flag checked against the
/// command's own.
#[derive(Debug)]
struct Parsed {
    positionals: Vec<String>,
    flags: Vec<(&'static str, Option<String>)>,
}

/// The flags of each command: name, and whether it takes a value.
fn flags_of(command: &str) -> &'static [(&'static str, bool)] {
    match command {
        "status" => &[
            ("--json", false),
            ("--watch", false),
            ("--interval", true),
            ("--timeout", true),
            ("--header", true),
        ],
        "tail" => &[
            ("--from", true),
            ("--group", true),
            ("--descriptor-set", true),
            ("--count", true),
            ("--timeout", true),
            ("--header", true),
        ],
        "call" => &[
            ("--descriptor-set", true),
            ("--timeout", true),
            ("--header", true),
        ],
        _ => &[],
    }
}

impl Parsed {
    fn split(command: &str, args: &[String]) -> Result<Self, Error> {
        let known = flags_of(command);
        let mut parsed = Parsed {
            positionals: Vec::new(),
            flags: Vec::new(),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            // A lone `-` or anything not starting with `--` is a positional (JSON may start
            // with `-` only as a number, which is not a request).
            if !arg.starts_with("--") {
                parsed.positionals.push(arg.clone());
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (arg.as_str(), None),
            };
            let Some(&(flag, takes_value)) = known.iter().find(|(flag, _)| *flag == name) else {
                let accepted: Vec<&str> = known.iter().map(|(flag, _)| *flag).collect();
                return Err(Error::usage(if accepted.is_empty() {
                    format!("unknown flag `{name}`")
                } else {
                    format!(
                        "unknown flag `{name}` for `meshless {command}`: it takes {}",
                        accepted.join(", ")
                    )
                }));
            };
            let value = match (takes_value, inline) {
                (true, Some(value)) => Some(value),
                (true, None) => Some(
                    args.next()
                        .cloned()
                        .ok_or_else(|| Error::usage(format!("{flag} needs a value")))?,
                ),
                (false, None) => None,
                (false, Some(_)) => {
                    return Err(Error::usage(format!("{flag} takes no value")));
                }
            };
            if flag != "--header" && parsed.flags.iter().any(|(f, _)| *f == flag) {
                return Err(Error::usage(format!("{flag} is given twice")));
            }
            parsed.flags.push((flag, value));
        }
        Ok(parsed)
    }

    fn positionals<const N: usize>(
        &mut self,
        command: &str,
        names: [&str; N],
    ) -> Result<[String; N], Error> {
        let given = std::mem::take(&mut self.positionals);
        if given.len() < N {
            return Err(Error::usage(format!(
                "`meshless {command}` needs {}: missing {}",
                names.join(" "),
                names[given.len()..].join(" ")
            )));
        }
        if given.len() > N {
            return Err(Error::usage(format!(
                "`meshless {command}` takes {}: unexpected `{}`",
                names.join(" "),
                given[N]
            )));
        }
        Ok(given
            .try_into()
            .unwrap_or_else(|_| unreachable!("the length was checked")))
    }

    fn switch(&mut self, flag: &str) -> bool {
        self.take(flag).is_some()
    }

    fn value(&mut self, flag: &str) -> Option<String> {
        self.take(flag).flatten()
    }

    fn duration(&mut self, flag: &str) -> Result<Option<Duration>, Error> {
        self.value(flag)
            .map(|text| {
                parse_duration(&text).map_err(|bad| {
                    Error::usage(match bad {
                        BadDuration::Unreadable => {
                            format!("{flag} takes a duration such as 500ms, 2s or 1m, not `{text}`")
                        }
                        BadDuration::TooLong => {
                            format!("{flag} takes at most a year (8760h), not `{text}`")
                        }
                    })
                })
            })
            .transpose()
    }

    /// Every value of a flag that may be given several times.
    fn take_all(&mut self, flag: &str) -> Vec<String> {
        let mut values = Vec::new();
        while let Some(value) = self.value(flag) {
            values.push(value);
        }
        values
    }

    fn take(&mut self, flag: &str) -> Option<Option<String>> {
        let at = self.flags.iter().position(|(f, _)| *f == flag)?;
        Some(self.flags.remove(at).1)
    }

    /// Every flag of the command was looked at by the time the command is built.
    fn finish(self, command: Command) -> Result<Command, Error> {
        debug_assert!(self.flags.is_empty(), "flags left: {:?}", self.flags);
        Ok(command)
    }
}

/// The longest duration a flag takes: a year. Longer ones are mistakes, and deadlines past
/// what `Instant` can hold would panic.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a duration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadDuration {
    /// Not a positive number with a known unit.
    Unreadable,
    /// More than [`MAX_DURATION`].
    TooLong,
}

/// `500ms`, `2s`, `1.5s`, `1m`, `1h`; a bare number is seconds. Positive, at most
/// [`MAX_DURATION`].
pub(crate) fn parse_duration(text: &str) -> Result<Duration, BadDuration> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| BadDuration::Unreadable)?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(BadDuration::Unreadable),
    };
    // Compared as seconds first: a number too big for a `Duration` is too long, not
    // unreadable.
    if seconds > MAX_DURATION.as_secs_f64() {
        return Err(BadDuration::TooLong);
    }
    let duration = Duration::try_from_secs_f64(seconds).map_err(|_| BadDuration::Unreadable)?;
    if duration.is_zero() {
        return Err(BadDuration::Unreadable);
    }
    Ok(duration)
}

#[cfg(test)]
mod test;
