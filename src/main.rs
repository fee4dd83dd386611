//! The `outpost` command line. Everything it runs lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use outpost::config::{self, ConfigError};

#[derive(Parser)]
#[command(
    name = "outpost",
    version,
    about = "Edge gateway: local MQTT broker, durable outbox, cloud uplink"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (default config: /etc/outpost/outpost.toml if present,
    /// else the built-in one with state in ./outpost-state).
    Run {
        /// The config file [default: /etc/outpost/outpost.toml if it exists,
        /// else the built-in config].
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a config file and print every problem with its key path.
    CheckConfig {
        /// The config file [default: /etc/outpost/outpost.toml if it exists,
        /// else the built-in config].
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Ask the running daemon for its connection state, queues and counters.
    Status {
        /// The config file [default: /etc/outpost/outpost.toml if it exists,
        /// else the built-in config].
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the daemon's JSON snapshot as it is.
        #[arg(long)]
        json: bool,
    },
    /// Keys and certificates: keygen, csr, ca, issue, inspect.
    Cert {
        #[command(subcommand)]
        command: outpost::pki::cli::CertCommand,
    },
    /// Add a user to a local-broker password file, or change its password
    /// (Mosquitto's format: the file works with mosquitto_passwd and
    /// Mosquitto too). Asks for the password unless --password-stdin.
    Passwd {
        /// The password file (made if missing; see broker.password_file).
        file: PathBuf,
        /// The user to add, or whose password to change.
        user: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Write a working config for ThingsBoard, ThingSpeak, The Things
    /// Stack or an MQTT broker, checked as check-config checks it. Asks for
    /// what the flags do not give (answers may also come on stdin, a line
    /// each). An existing file is kept as FILE.bak.
    Init(InitArgs),
    /// Print a shell completion script: `source <(outpost completions bash)`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), as the package installs it.
    Man,
    /// List records a platform can never take, moved out of the queue;
    /// or put them back into their queue (--retry), or delete them
    /// (--purge). A running outpost does it itself; else the outbox file
    /// is changed directly.
    DeadLetters {
        /// The config file [default: /etc/outpost/outpost.toml if it exists,
        /// else the built-in config].
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Put dead letter ID (or every one, with --all) back at the end
        /// of its sink's queue, after a change that makes it sendable.
        #[arg(long, value_name = "ID", num_args = 0..=1, conflicts_with = "purge")]
        retry: Option<Option<i64>>,
        /// Delete dead letter ID (or every one, with --all) for good.
        #[arg(long, value_name = "ID", num_args = 0..=1)]
        purge: Option<Option<i64>>,
        /// With --retry or --purge: every dead letter.
        #[arg(long)]
        all: bool,
    },
}

#[derive(clap::Args)]
struct InitArgs {
    /// The file to write.
    #[arg(long, short, default_value = "/etc/outpost/outpost.toml")]
    config: PathBuf,
    /// thingsboard, thingspeak, ttn or mqtt.
    #[arg(long)]
    platform: Option<String>,
    /// The platform's URL (mqtt(s)://host:port); for ThingsBoard a host
    /// alone means mqtts://HOST:8883.
    #[arg(long)]
    url: Option<String>,
    /// ThingsBoard access token.
    #[arg(long)]
    token: Option<String>,
    /// ThingsBoard self-provisioning (instead of a token).
    #[arg(long)]
    provision_key: Option<String>,
    /// ThingsBoard provision device secret.
    #[arg(long)]
    provision_secret: Option<String>,
    /// ThingSpeak channel id.
    #[arg(long)]
    channel_id: Option<u64>,
    /// ThingSpeak MQTT device credentials; username/password also for mqtt.
    #[arg(long)]
    client_id: Option<String>,
    /// MQTT username.
    #[arg(long)]
    username: Option<String>,
    /// MQTT password.
    #[arg(long)]
    password: Option<String>,
    /// The Things Stack: cluster (eu1, nam1, au1), application id, API key.
    #[arg(long)]
    region: Option<String>,
    /// The Things Stack application id.
    #[arg(long)]
    application_id: Option<String>,
    /// The Things Stack API key (NNSXS...).
    #[arg(long)]
    api_key: Option<String>,
    /// Where outpost keeps its outbox.
    #[arg(long, default_value = "/var/lib/outpost")]
    state_dir: String,
    /// The local broker's address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    listen: String,
    /// Never ask: fail naming what is missing.
    #[arg(long)]
    no_input: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(config),
        Command::Status { config, json } => match status(config, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("outpost: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Cert { command } => match outpost::pki::cli::run(command) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("outpost cert: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Passwd {
            file,
            user,
            password_stdin,
        } => match outpost::access::cli::passwd(&file, &user, password_stdin) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("outpost passwd: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            // Into memory first: the generator panics on a failed write
            // (a closed pipe), this way it is an exit code.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "outpost", &mut script);
            match std::io::stdout().write_all(&script) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        Command::Man => {
            use clap::CommandFactory;
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("outpost man: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Init(args) => match init(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("outpost init: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::DeadLetters {
            config,
            retry,
            purge,
            all,
        } => match dead_letters(config, retry, purge, all) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("outpost: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => match run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("outpost: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check_config(path: Option<PathBuf>) -> ExitCode {
    match config::load_full(path.as_deref()) {
        Ok(loaded) => {
            // What the text points at, checked as a start would use it.
            let problems = outpost::control::preflight::check(&loaded.config);
            if !problems.is_empty() {
                eprintln!(
                    "{}",
                    ConfigError::Invalid {
                        origin: loaded.source.to_string(),
                        problems,
                    }
                );
                return ExitCode::FAILURE;
            }
            print!("{}", loaded.describe());
            ExitCode::SUCCESS
        }
        Err(e @ ConfigError::Invalid { .. }) | Err(e @ ConfigError::Read { .. }) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn status(path: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    use outpost::daemon::status_socket::{ask, find_socket};
    // The running daemon answers whatever the file says now: a file
    // broken since (a reload it refused) still names its state directory.
    let state_dir = match config::load(path.as_deref()) {
        Ok((config, _)) => config.state_dir,
        Err(e) => match path.as_deref().and_then(config::state_dir_of) {
            Some(dir) => dir,
            None => return Err(e.into()),
        },
    };
    let socket = find_socket(&state_dir, path.is_some()).map_err(anyhow::Error::msg)?;
    let v = ask(&socket, &serde_json::json!({"op": "status"})).map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", outpost::control::status::render(&v));
    }
    Ok(())
}

fn dead_letters(
    path: Option<PathBuf>,
    retry: Option<Option<i64>>,
    purge: Option<Option<i64>>,
    all: bool,
) -> anyhow::Result<()> {
    use outpost::store::{DeadOp, Pick};
    let (config, _) = config::load(path.as_deref())?;
    let act = match (retry, purge) {
        (Some(id), None) => Some((DeadOp::Retry, id, "retried", "--retry")),
        (None, Some(id)) => Some((DeadOp::Purge, id, "purged", "--purge")),
        _ => None,
    };
    if let Some((op, id, done, flag)) = act {
        let pick = match (id, all) {
            (Some(id), false) => Pick::One(id),
            (None, true) => Pick::All,
            (Some(_), true) => anyhow::bail!("{flag} takes an ID or --all, not both"),
            (None, false) => anyhow::bail!("{flag} needs the ID of a dead letter, or --all"),
        };
        return dead_letters_act(&config, path.is_some(), op, pick, done);
    }
    if all {
        anyhow::bail!("--all goes with --retry or --purge");
    }
    let db = config.store_path();
    if !db.exists() {
        println!("no outbox at {} yet: no dead letters", db.display());
        return Ok(());
    }
    let rows = outpost::store::dead_letters(&db)?;
    if rows.is_empty() {
        println!("no dead letters in {}", db.display());
        return Ok(());
    }
    println!("{} dead letter(s) in {}:", rows.len(), db.display());
    for r in rows {
        let payload = String::from_utf8_lossy(&r.payload);
        let shown: String = payload.chars().take(120).collect();
        let more = if payload.chars().count() > 120 {
            "…"
        } else {
            ""
        };
        println!(
            "#{} sink={} device={} ts={} reason: {}\n    payload: {shown}{more}",
            r.id, r.sink, r.device, r.ts, r.reason
        );
    }
    Ok(())
}

/// Asks the running daemon to act on dead letters; without one, opens the
/// outbox itself.
fn dead_letters_act(
    config: &config::Config,
    explicit: bool,
    op: outpost::store::DeadOp,
    pick: outpost::store::Pick,
    done: &str,
) -> anyhow::Result<()> {
    use outpost::daemon::status_socket::{ask, find_socket};
    use outpost::store::Pick;
    let (which, all) = match pick {
        Pick::One(id) => (serde_json::json!(id), false),
        Pick::All => (serde_json::Value::Null, true),
    };
    let op_name = match op {
        outpost::store::DeadOp::Retry => "retry",
        outpost::store::DeadOp::Purge => "purge",
    };
    let (n, kept) = match find_socket(&config.state_dir, explicit) {
        Ok(socket) if socket.exists() => {
            let v = ask(
                &socket,
                &serde_json::json!({"op": op_name, "id": which, "all": all}),
            )
            .map_err(anyhow::Error::msg)?;
            if let Some(e) = v["error"].as_str() {
                anyhow::bail!("outpost could not do it: {e}");
            }
            (
                v["done"].as_u64().unwrap_or(0),
                v["kept"].as_array().map_or(0, Vec::len),
            )
        }
        _ => {
            let db = config.store_path();
            if !db.exists() {
                anyhow::bail!("no outbox at {} yet: no dead letters", db.display());
            }
            let sinks: Vec<String> = config.sinks.keys().cloned().collect();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (outbox, writer) = outpost::store::Outbox::open(db, &config.store, &sinks)?;
            let r = rt.block_on(async {
                let r = outbox.dead_letters_act(op, pick).await;
                outbox.close().await;
                r
            });
            writer.join();
            let r = r?;
            (r.done as u64, r.kept.len())
        }
    };
    if n == 0 && kept == 0 {
        anyhow::bail!("no such dead letter (see `outpost dead-letters`)");
    }
    println!("{n} dead letter(s) {done}");
    if kept > 0 {
        println!("{kept} kept: their sink is no longer configured");
    }
    Ok(())
}

fn run(path: Option<PathBuf>) -> anyhow::Result<()> {
    let loaded = config::load_for_start(path.as_deref())?;
    outpost::daemon::logging::init(&loaded.config.log_level);
    tracing::info!(config = %loaded.source, state_dir = %loaded.config.state_dir.display(), "starting");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Boxed: the daemon's future is large, and on the main thread's stack
    // every page it once touched would stay resident for the process's life.
    let exit = runtime.block_on(Box::pin(outpost::daemon::run(loaded, path.clone())))?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    if exit == outpost::daemon::Exit::Reload {
        restart_in_place()?;
    }
    Ok(())
}

/// Replaces this process with a fresh outpost (same PID, same arguments):
/// the new config applies everywhere, the local broker included.
fn restart_in_place() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    outpost::daemon::supervisor::reloading();
    let exe = std::env::current_exe().context("cannot find outpost's own executable")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let err = std::process::Command::new(&exe).args(&args).exec();
    Err(anyhow::anyhow!(
        "cannot restart {} to apply the config: {err}",
        exe.display()
    ))
}

fn init(a: InitArgs) -> anyhow::Result<()> {
    use outpost::config::init::{self, Answers};
    use std::io::{BufRead, IsTerminal, Write};
    let answers = Answers {
        platform: a
            .platform
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        url: a.url,
        token: a.token,
        provision_key: a.provision_key,
        provision_secret: a.provision_secret,
        channel_id: a.channel_id,
        client_id: a.client_id,
        username: a.username,
        password: a.password,
        region: a.region,
        application_id: a.application_id,
        api_key: a.api_key,
        state_dir: Some(a.state_dir),
        listen: Some(a.listen),
    };
    let terminal = std::io::stdin().is_terminal();
    let no_input = a.no_input;
    let mut ask = |q: &str, secret: bool| -> Result<String, String> {
        let what = q.trim_end_matches([':', ' ']);
        if no_input {
            return Err(format!("{what} is missing"));
        }
        if terminal && secret {
            return outpost::access::cli::prompt(q);
        }
        if terminal {
            print!("{q}");
            let _ = std::io::stdout().flush();
        }
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) | Err(_) => Err(format!("{what} is missing")),
            Ok(_) => Ok(line.trim_end_matches(['\n', '\r']).to_string()),
        }
    };
    let answers = answers.complete(&mut ask).map_err(anyhow::Error::msg)?;
    let text = answers.render().map_err(anyhow::Error::msg)?;
    let backup = init::write(&a.config, &text)?;
    println!("wrote {}", a.config.display());
    if let Some(b) = backup {
        println!("the previous file is kept as {}", b.display());
    }
    println!(
        "apply it with `systemctl reload outpost` (or run `outpost run --config {}`)",
        a.config.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every option and argument of every command says what it is.
    #[test]
    fn every_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "outpost", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:?}");
    }
}
