//! The report as aligned tables: INSTANCES, EVENT RPCS, GROUPS, EJECTED, and ERRORS when an
//! instance did not answer. Rows are sorted, so two reports of the same state are the same
//! text. What the servers said (every cell, every error) is printed with its control
//! characters escaped ([`printable`]).

use std::fmt::Write;

use super::gather::{Process, Report};
use crate::terminal::printable;

/// Services every meshless server may serve, left out of the INSTANCES table (the JSON has
/// them).
const INFRASTRUCTURE: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.channelz.v1.Channelz",
    "meshless.admin.v1.Admin",
    "meshless.v1.EventGroups",
];

/// The whole report as text.
pub(crate) fn render(report: &Report) -> String {
    let answered = report.instances.iter().filter(|i| i.status.is_ok()).count();
    let mut out = format!(
        "{}: {} instance{}, {answered} answered\n",
        printable(&report.target),
        report.instances.len(),
        plural(report.instances.len())
    );

    section(
        &mut out,
        "INSTANCES",
        &["INSTANCE", "PROCESS", "SERVICES", "EVENT RPCS", "UPTIME"],
        report
            .instances
            .iter()
            .map(|instance| match &instance.status {
                Ok(status) => {
                    let mut services: Vec<&str> = status
                        .services
                        .iter()
                        .map(String::as_str)
                        .filter(|s| !INFRASTRUCTURE.contains(s))
                        .collect();
                    services.sort_unstable();
                    vec![
                        instance.address.to_string(),
                        format!("{}:{}", status.host, status.process_id),
                        if services.is_empty() {
                            "-".to_owned()
                        } else {
                            services.join(",")
                        },
                        status.event_rpcs.len().to_string(),
                        duration(status.uptime_ms),
                    ]
                }
                Err(_) => vec![
                    instance.address.to_string(),
                    "-".into(),
                    "(no answer: see ERRORS)".into(),
                    "-".into(),
                    "-".into(),
                ],
            })
            .collect(),
    );

    let mut rpcs = Vec::new();
    for instance in &report.instances {
        let Ok(status) = &instance.status else {
            continue;
        };
        for rpc in &status.event_rpcs {
            rpcs.push(vec![
                instance.address.to_string(),
                rpc.rpc.clone(),
                format!("{:016x}", rpc.epoch),
                if rpc.last_sequence == 0 {
                    "none".to_owned()
                } else if rpc.first_sequence == 0 || rpc.first_sequence > rpc.last_sequence {
                    format!("none (last {})", rpc.last_sequence)
                } else {
                    format!("{}..{}", rpc.first_sequence, rpc.last_sequence)
                },
                rpc.storage.clone(),
                if rpc.storage == "files" {
                    bytes(rpc.bytes_on_disk)
                } else {
                    "-".to_owned()
                },
                rpc.subscribers.len().to_string(),
                rpc.subscribers_cut_off.to_string(),
            ]);
        }
    }
    section(
        &mut out,
        "EVENT RPCS",
        &[
            "PRODUCER",
            "RPC",
            "EPOCH",
            "RETAINED",
            "STORAGE",
            "ON DISK",
            "SUBSCRIBERS",
            "CUT OFF",
        ],
        rpcs,
    );

    section(
        &mut out,
        "GROUPS",
        &[
            "RPC",
            "GROUP",
            "PRODUCER",
            "MEMBERS",
            "UNACKED",
            "HELD KEYS",
            "LAG",
            "LAST ACK",
        ],
        report
            .groups
            .iter()
            .map(|group| {
                vec![
                    group.rpc.clone(),
                    group.group.clone(),
                    group.producer.to_string(),
                    group.members.to_string(),
                    group.unacknowledged.to_string(),
                    group.held_keys.to_string(),
                    group.lag.to_string(),
                    match group.last_acknowledgement_ms_ago {
                        Some(ms) => format!("{} ago", duration(ms)),
                        None => "never".to_owned(),
                    },
                ]
            })
            .collect(),
    );

    section(
        &mut out,
        "EJECTED",
        &["INSTANCE", "TARGET", "BY PROCESS", "FOR", "WHY"],
        report
            .ejected
            .iter()
            .map(|ejected| {
                vec![
                    ejected.instance.clone(),
                    ejected.target.clone(),
                    process(&ejected.process),
                    duration(ejected.ejected_for_ms),
                    if ejected.because.is_empty() {
                        "-".to_owned()
                    } else {
                        ejected.because.clone()
                    },
                ]
            })
            .collect(),
    );

    let mut errors: Vec<String> = report.errors().into_iter().map(str::to_owned).collect();
    for instance in &report.instances {
        let Ok(status) = &instance.status else {
            continue;
        };
        for rpc in status
            .event_rpcs
            .iter()
            .filter(|r| !r.last_error.is_empty())
        {
            errors.push(format!(
                "{} {}: the event log's last error: {}",
                instance.address, rpc.rpc, rpc.last_error
            ));
        }
    }
    if !errors.is_empty() {
        out.push_str("\nERRORS\n");
        for error in errors {
            let _ = writeln!(out, "{}", printable(&error));
        }
    }
    out
}

/// `host:pid (servers a, b)`.
fn process(process: &Process) -> String {
    let servers: Vec<String> = process.servers.iter().map(ToString::to_string).collect();
    format!(
        "{}:{} ({})",
        process.host,
        process.process_id,
        servers.join(",")
    )
}

fn section(out: &mut String, title: &str, headers: &[&str], rows: Vec<Vec<String>>) {
    let _ = writeln!(out, "\n{title}");
    if rows.is_empty() {
        out.push_str("(none)\n");
        return;
    }
    out.push_str(&table(headers, &rows));
}

/// Columns aligned on the widest cell, two spaces apart; the last column is not padded.
/// Control characters in cells are escaped.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|cell| printable(cell).into_owned())
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let headers: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&headers).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `850ms`, `12s`, `3m05s`, `2h03m`, `4d02h`.
pub(crate) fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `512 B`, `1.5 KiB`, `20.0 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn columns_align() {
        let text = table(
            &["A", "LONGER", "C"],
            &[
                vec!["wide cell".into(), "x".into(), "last".into()],
                vec!["y".into(), "z".into(), "".into()],
            ],
        );
        assert_eq!(
            text,
            "A          LONGER  C\nwide cell  x       last\ny          z\n"
        );
    }

    #[test]
    fn what_servers_say_is_printed_with_control_characters_escaped() {
        use super::super::gather::{derive, Instance};
        use meshless::admin::v1::{
            ChannelInstanceStatus, ChannelStatus, EventRpcStatus, GroupStatus, InstanceStatus,
        };

        let clear = "\x1b[2J\x1b]0;owned\x07";
        let status = InstanceStatus {
            services: vec![format!("evil.{clear}Service")],
            event_rpcs: vec![EventRpcStatus {
                rpc: "/a.B/C".into(),
                last_error: format!("disk full{clear}"),
                groups: vec![GroupStatus {
                    name: format!("billing\n{clear}"),
                    ..GroupStatus::default()
                }],
                ..EventRpcStatus::default()
            }],
            channels: vec![ChannelStatus {
                target: "ipv4:10.0.0.2:1".into(),
                instances: vec![ChannelInstanceStatus {
                    address: "10.0.0.2:1".into(),
                    ejected: true,
                    ejected_because: format!("\x1b[31mUNAVAILABLE\x1b[0m{clear}"),
                    ..ChannelInstanceStatus::default()
                }],
                ..ChannelStatus::default()
            }],
            host: format!("host{clear}"),
            process_id: 7,
            ..InstanceStatus::default()
        };
        let report = derive(
            "ipv4:127.0.0.1:50051",
            vec![
                Instance {
                    address: "127.0.0.1:50051".parse().expect("an address"),
                    status: Ok(status),
                },
                Instance {
                    address: "127.0.0.1:50052".parse().expect("an address"),
                    status: Err(format!("127.0.0.1:50052: UNAVAILABLE: {clear}")),
                },
            ],
        );
        let text = render(&report);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        let escaped = r"\u{1b}[2J\u{1b}]0;owned\u{7}";
        for shown in [
            format!(r"\u{{1b}}[31mUNAVAILABLE\u{{1b}}[0m{escaped}"),
            format!("disk full{escaped}"),
            format!(r"billing\n{escaped}"),
            format!("host{escaped}:7"),
            format!("evil.{escaped}Service"),
            format!("UNAVAILABLE: {escaped}"),
        ] {
            assert!(text.contains(&shown), "{shown} in {text}");
        }
        // Every row is one line: the group's name did not break its row.
        let groups: Vec<&str> = text
            .lines()
            .skip_while(|line| *line != "GROUPS")
            .skip(2)
            .take_while(|line| !line.is_empty())
            .collect();
        assert_eq!(groups.len(), 1, "{text}");
    }

    #[test]
    fn human_units() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_400), "12s");
        assert_eq!(duration(185_000), "3m05s");
        assert_eq!(duration(7_380_000), "2h03m");
        assert_eq!(duration(352_800_000), "4d02h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(20 * 1024 * 1024), "20.0 MiB");
    }
}
