//! `outpost passwd FILE USER`: adds a user to a password file, or changes
//! its password, the way `mosquitto_passwd FILE USER` does (the file works
//! in Mosquitto too). The password is asked twice on the terminal, without
//! echo, or read from the first line of standard input with
//! `--password-stdin` (for scripts).

use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::path::Path;

use nix::sys::termios::{self, LocalFlags, SetArg};

use super::passwd;

/// Runs the command; the error is the sentence to print.
pub fn passwd(file: &Path, user: &str, from_stdin: bool) -> Result<(), String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        let first = prompt("Password: ")?;
        let again = prompt("Reenter password: ")?;
        if first != again {
            return Err("the passwords do not match; nothing was changed".into());
        }
        first
    };
    if password.is_empty() {
        return Err("an empty password; nothing was changed".into());
    }
    passwd::set_user(file, user, &password)?;
    println!("{}: password of {user} set", file.display());
    Ok(())
}

/// Reads one line from the terminal with echo off.
pub fn prompt(text: &str) -> Result<String, String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| format!("no terminal to ask for the password ({e}); use --password-stdin"))?;
    let saved =
        termios::tcgetattr(tty.as_fd()).map_err(|e| format!("cannot use the terminal: {e}"))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    termios::tcsetattr(tty.as_fd(), SetArg::TCSANOW, &quiet)
        .map_err(|e| format!("cannot turn off the terminal's echo: {e}"))?;
    let mut out = &tty;
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    let _ = termios::tcsetattr(tty.as_fd(), SetArg::TCSANOW, &saved);
    let _ = out.write_all(b"\n");
    read.map_err(|e| format!("cannot read the password: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
