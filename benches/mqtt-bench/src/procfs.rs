//! What /proc says about another process: the broker's resident memory.

/// The resident set size of process `pid` in kB (VmRSS in /proc/PID/status), if it can be read.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

/// CPU time used by process `pid` (or this process, for `None`), user and system, in seconds.
pub fn cpu_s(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    parse_cpu_s(&std::fs::read_to_string(path).ok()?)
}

/// utime and stime, fields 14 and 15 of /proc/PID/stat, in clock ticks of 1/100 s (USER_HZ,
/// 100 on Linux x86-64). The command name (field 2) may hold spaces: fields are counted after
/// its closing parenthesis.
fn parse_cpu_s(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Each CPU's time by kind, from /proc/stat, in clock ticks (USER_HZ): the generator's own
/// CPU time leaves out the softirq time its CPU spends on its behalf (the loopback's TCP work),
/// and says nothing of the time a CPU sat idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// user + nice + system: tasks.
    pub tasks: u64,
    /// irq + softirq.
    pub interrupts: u64,
    /// idle + iowait.
    pub idle: u64,
}

/// [`CpuTicks`] of every CPU, in CPU order (empty if /proc/stat cannot be read).
pub fn cpu_ticks() -> Vec<CpuTicks> {
    std::fs::read_to_string("/proc/stat")
        .map(|stat| parse_cpu_ticks(&stat))
        .unwrap_or_default()
}

fn parse_cpu_ticks(stat: &str) -> Vec<CpuTicks> {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .filter_map(|line| {
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            let at = |i: usize| f.get(i).copied().unwrap_or(0);
            Some(CpuTicks {
                tasks: at(0) + at(1) + at(2),
                interrupts: at(5) + at(6),
                idle: at(3) + at(4),
            })
        })
        .collect()
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        Some("mB") => Some(value * 1024),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let status = "Name:\tmosquitto\nVmPeak:\t  20000 kB\nVmRSS:\t    7168 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(7168));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn parses_stat() {
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_cpu_s(stat), Some(3.0));
        assert!(cpu_s(None).is_some());
    }

    #[test]
    fn parses_proc_stat() {
        let stat = "cpu  9 0 9 9 0 0 9 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\ncpu1 10 0 20 30 0 0 40 0 0 0\nintr 1 2\n";
        assert_eq!(
            parse_cpu_ticks(stat),
            vec![
                CpuTicks {
                    tasks: 6,
                    interrupts: 13,
                    idle: 9
                },
                CpuTicks {
                    tasks: 30,
                    interrupts: 40,
                    idle: 30
                },
            ]
        );
        assert!(!cpu_ticks().is_empty());
    }

    #[test]
    fn reads_own_rss() {
        assert!(rss_kb(std::process::id()).is_some_and(|kb| kb > 0));
    }
}
