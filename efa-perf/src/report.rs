//! perftest-shaped text output: the dashed banner, column headers and rows.
//!
//! Column headers and row layouts follow perftest's `RESULT_FMT*` and `REPORT_FMT*` so scripts that split
//! perftest's output on whitespace read these tables unchanged.

use crate::cli::Metric;
use crate::record::{BwRow, LatRow, RunInfo};
use crate::stats::{lat_kept, BwUnit};

/// perftest's separator line.
pub const RESULT_LINE: &str =
    "---------------------------------------------------------------------------------------";

/// The banner printed before the results.
pub fn banner(info: &RunInfo) -> String {
    let kind = match info.metric {
        Metric::Bw if info.bidirectional => "Bidirectional BW",
        Metric::Bw => "BW",
        Metric::Lat => "Latency",
    };
    let mut s = String::new();
    s.push_str(RESULT_LINE);
    s.push('\n');
    s.push_str(&format!(
        "                    {} {} Test\n",
        info.verb.perftest_name(),
        kind
    ));
    s.push_str(&format!(
        " Dual-port       : OFF\t\tDevice         : {}\n",
        info.device
    ));
    s.push_str(&format!(
        " Number of qps   : {}\t\tTransport type : {}\n",
        info.queue_pairs, info.transport_type
    ));
    s.push_str(&format!(
        " Connection type : {}\t\tUsing SRQ      : OFF\n",
        info.connection_type
    ));
    let cycle = match info.cycle_buffer {
        Some(bytes) => format!("{bytes} bytes"),
        None => "a place per message".into(),
    };
    s.push_str(&format!(
        " TX depth        : {}\t\tCycle buffer   : {cycle}\n",
        info.tx_depth
    ));
    s.push_str(&format!(
        " Fabric          : {}\t\tMode           : {}\n",
        info.fabric, info.mode
    ));
    s.push_str(&format!(" Fabric choice   : {}\n", info.fabric_reason));
    s.push_str(&format!(
        " Level           : {}\n",
        if info.raw {
            "raw (efa crate queue pairs, no engine)"
        } else {
            "engine (transport::Engine)"
        }
    ));
    s.push_str(&format!(
        " Use event       : {}\t\tCPU set        : {}\n",
        if info.use_event { "ON" } else { "OFF" },
        info.cpu_set.as_deref().unwrap_or("not pinned")
    ));
    if let Some(wait) = &info.worker_wait {
        s.push_str(&format!(" Worker wait     : {wait}\n"));
    }
    s.push_str(RESULT_LINE);
    s.push('\n');
    s
}

/// The column header line (with perftest's separator above it).
pub fn header(metric: Metric, unit: BwUnit, cpu: bool) -> String {
    let mut s = format!("{RESULT_LINE}\n");
    match metric {
        Metric::Bw => s.push_str(&format!(
            " #bytes     #iterations    BW peak[{u}]    BW average[{u}]   MsgRate[Mpps]",
            u = unit.label()
        )),
        Metric::Lat => s.push_str(
            " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] ",
        ),
    }
    if cpu {
        s.push_str("    CPU_Util[%]    Peer_CPU_Util[%]");
    }
    s
}

fn cpu_cols(client: Option<f64>, server: Option<f64>) -> String {
    let f = |v: Option<f64>| v.map(|v| format!("{v:<3.2}")).unwrap_or_else(|| "-".into());
    format!("\t    {}\t\t    {}", f(client), f(server))
}

/// One bandwidth row, laid out as perftest's `REPORT_FMT`.
pub fn bw_row(r: &BwRow, cpu: bool) -> String {
    let mut s = format!(
        " {:<7}    {:<10}       {:<7.2}            {:<7.2}\t\t     {:<7.6}",
        r.bytes, r.iterations, r.bw_peak, r.bw_average, r.msg_rate_mpps
    );
    if cpu {
        s.push_str(&cpu_cols(r.cpu_util_client, r.cpu_util_server));
    }
    s
}

/// Which latency samples a run lists after each size's figures, as perftest's `-H` and `-U` do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleLists {
    /// In the order measured (perftest's `-U`).
    pub unsorted: bool,
    /// Sorted, perftest's tail left out (perftest's `-H`, which `-U` implies).
    pub sorted: bool,
}

impl SampleLists {
    /// Whether any list is asked for.
    pub fn any(self) -> bool {
        self.unsorted || self.sorted
    }
}

/// The lists `lists` asks for, as perftest prints them: a `#, usec` line, then `index, value` per
/// sample from 1, values as C's `%g`; the order measured first, then sorted, of them the ones the
/// figures use ([`lat_kept`]: perftest's tail of the largest left out).
pub fn sample_lists(samples_us: &[f64], lists: SampleLists) -> String {
    let mut s = String::new();
    let mut list = |values: &mut dyn Iterator<Item = f64>| {
        s.push_str("#, usec\n");
        for (i, v) in values.enumerate() {
            s.push_str(&format!("{}, {}\n", i + 1, fmt_g(v)));
        }
    };
    if lists.unsorted {
        list(&mut samples_us.iter().copied());
    }
    if lists.sorted {
        let mut sorted = samples_us.to_vec();
        sorted.sort_by(f64::total_cmp);
        list(&mut sorted[..lat_kept(sorted.len())].iter().copied());
    }
    s
}

/// `v` as C's `%g`: six significant digits, trailing zeros dropped, an exponent outside 1e-4..1e6.
fn fmt_g(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let exp = v.abs().log10().floor() as i32;
    if !(-4..6).contains(&exp) {
        let s = format!("{v:.5e}");
        let (mantissa, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        let sign = if e < 0 { '-' } else { '+' };
        return format!("{}e{sign}{:02}", trim_zeros(mantissa), e.abs());
    }
    trim_zeros(&format!("{v:.*}", (5 - exp) as usize)).to_string()
}

/// A decimal without its trailing zeros (and without a trailing point).
fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// One latency row, laid out as perftest's `REPORT_FMT_LAT`.
pub fn lat_row(r: &LatRow, cpu: bool) -> String {
    let mut s = format!(
        " {:<7} {:<10}          {:<7.2}        {:<7.2}      {:<7.2}  \t       {:<7.2}     \t{:<7.2}\t\t{:<7.2} \t\t{:<7.2}",
        r.bytes,
        r.iterations,
        r.t_min_us,
        r.t_max_us,
        r.t_typical_us,
        r.t_avg_us,
        r.t_stdev_us,
        r.p99_us,
        r.p99_9_us
    );
    if cpu {
        s.push_str(&cpu_cols(r.cpu_util_client, r.cpu_util_server));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_lists_are_perftests_unsorted_then_sorted_without_the_tail() {
        let samples = [3.5, 1.25, 2.0, 10.0, 5.0];
        let both = SampleLists {
            unsorted: true,
            sorted: true,
        };
        assert_eq!(
            sample_lists(&samples, both),
            "#, usec\n1, 3.5\n2, 1.25\n3, 2\n4, 10\n5, 5\n#, usec\n1, 1.25\n2, 2\n3, 3.5\n"
        );
        let sorted = SampleLists {
            unsorted: false,
            sorted: true,
        };
        // As the figures: a run too short for the tail rule keeps every sample.
        assert_eq!(sample_lists(&[7.0], sorted), "#, usec\n1, 7\n");
        assert!(!SampleLists::default().any());
        assert_eq!(sample_lists(&samples, SampleLists::default()), "");
    }

    #[test]
    fn values_print_as_c_percent_g() {
        for (v, g) in [
            (37.412345678, "37.4123"),
            (0.5, "0.5"),
            (120.0, "120"),
            (999_999.0, "999999"),
            (1_234_567.0, "1.23457e+06"),
            (0.000_012_345_67, "1.23457e-05"),
            (0.0, "0"),
        ] {
            assert_eq!(fmt_g(v), g, "{v}");
        }
    }

    #[test]
    fn headers_match_perftest_and_switch_units() {
        let mb = header(Metric::Bw, BwUnit::MebibytesPerSec, false);
        assert!(mb.ends_with(
            " #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]"
        ));
        let gb = header(Metric::Bw, BwUnit::GigabitsPerSec, false);
        assert!(gb.contains("BW peak[Gb/sec]    BW average[Gb/sec]"));
        let lat = header(Metric::Lat, BwUnit::MebibytesPerSec, true);
        assert!(lat.contains("t_typical[usec]") && lat.contains("99.9% percentile[usec]"));
        assert!(lat.contains("CPU_Util[%]"));
    }

    #[test]
    fn rows_split_into_the_header_columns() {
        let r = BwRow {
            bytes: 65536,
            iterations: 5000,
            bw_peak: 11126.654,
            bw_average: 11124.91,
            msg_rate_mpps: 0.177999,
            cpu_util_client: None,
            cpu_util_server: None,
            cores_busy: None,
        };
        let line = bw_row(&r, false);
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields,
            ["65536", "5000", "11126.65", "11124.91", "0.177999"]
        );
        let l = LatRow {
            bytes: 2,
            iterations: 1000,
            t_min_us: 1.0,
            t_max_us: 9.5,
            t_typical_us: 2.0,
            t_avg_us: 2.25,
            t_stdev_us: 0.5,
            p99_us: 7.0,
            p99_9_us: 9.0,
            cpu_util_client: Some(99.0),
            cpu_util_server: None,
            cores_busy: None,
            samples_us: None,
        };
        let line = lat_row(&l, true);
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields,
            ["2", "1000", "1.00", "9.50", "2.00", "2.25", "0.50", "7.00", "9.00", "99.00", "-"]
        );
    }
}
