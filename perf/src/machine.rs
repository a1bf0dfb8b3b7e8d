//! What machine a result comes from (STYLE §11: every run records the git SHA, kernel, CPU,
//! disk and config): read from /proc and /sys, and from git for the source revision.

use std::path::Path;

use serde::Serialize;

/// The machine and source a run was measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Host name.
    pub hostname: String,
    /// Kernel release.
    pub kernel: String,
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Memory in GiB.
    pub memory_gib: f64,
    /// Load averages (1, 5, 15 minutes) when the run started: the machine is shared.
    pub load_average: [f64; 3],
    /// The block device and file system holding the data directory, if one was given.
    pub disk: Option<Disk>,
    /// `git describe --always --dirty` of the working tree, or `unknown`.
    pub git: String,
}

/// The disk under a directory.
#[derive(Clone, Debug, Serialize)]
pub struct Disk {
    /// The directory asked about.
    pub dir: String,
    /// Mount point holding it.
    pub mount: String,
    /// Source device of that mount.
    pub device: String,
    /// File system type.
    pub fs_type: String,
    /// Model of the device from /sys, when known.
    pub model: Option<String>,
    /// Whether the kernel thinks it rotates.
    pub rotational: Option<bool>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The current load averages.
pub fn load_average() -> [f64; 3] {
    let text = read("/proc/loadavg");
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<f64>().unwrap_or(0.0));
    [
        fields.next().unwrap_or(0.0),
        fields.next().unwrap_or(0.0),
        fields.next().unwrap_or(0.0),
    ]
}

/// Describes this machine; `dir` is the data directory whose disk matters.
pub fn describe(dir: Option<&Path>) -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or_else(
            || "unknown".to_owned(),
            |(_, model)| model.trim().to_owned(),
        );
    let memory_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0);
    let git = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    Machine {
        hostname: read("/proc/sys/kernel/hostname"),
        kernel: read("/proc/sys/kernel/osrelease"),
        cpu,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: memory_kib / (1024.0 * 1024.0),
        load_average: load_average(),
        disk: dir.and_then(disk_of),
        git,
    }
}

/// Finds the mount holding `dir` in /proc/self/mountinfo (longest matching mount point).
fn disk_of(dir: &Path) -> Option<Disk> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let mountinfo = read("/proc/self/mountinfo");
    let mut best: Option<(String, String, String)> = None;
    for line in mountinfo.lines() {
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split_whitespace().nth(4)?.to_owned();
        let mut right = right.split_whitespace();
        let fs_type = right.next()?.to_owned();
        let device = right.next()?.to_owned();
        if dir.starts_with(&mount) && best.as_ref().is_none_or(|b| mount.len() > b.0.len()) {
            best = Some((mount, device, fs_type));
        }
    }
    let (mount, device, fs_type) = best?;
    let name = device.rsplit('/').next().unwrap_or_default().to_owned();
    // A partition's queue attributes live on its parent device.
    let block = (0..name.len())
        .rev()
        .map(|end| &name[..=end])
        .find(|candidate| Path::new(&format!("/sys/block/{candidate}")).exists())
        .map(str::to_owned);
    let model = block
        .as_ref()
        .map(|b| read(&format!("/sys/block/{b}/device/model")))
        .filter(|m| !m.is_empty());
    let rotational = block
        .as_ref()
        .map(|b| read(&format!("/sys/block/{b}/queue/rotational")) == "1");
    Some(Disk {
        dir: dir.display().to_string(),
        mount,
        device,
        fs_type,
        model,
        rotational,
    })
}

/// Resident set size of process `pid` in MiB, if it can be read.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|kib| kib / 1024.0)
}

/// CPU seconds (user + system) process `pid` has used, if it can be read.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}
