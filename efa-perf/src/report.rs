//! perftest-shaped text output: the dashed banner, column headers and rows.
//!
//! Column headers and row layouts follow perftest's `RESULT_FMT*` and `REPORT_FMT*` so scripts that split
//! perftest's output on whitespace read these tables unchanged.

use crate::cli::Metric;
use crate::record::{BwRow, LatRow, RunInfo};
use crate::stats::BwUnit;

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
        };
        let line = lat_row(&l, true);
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields,
            ["2", "1000", "1.00", "9.50", "2.00", "2.25", "0.50", "7.00", "9.00", "99.00", "-"]
        );
    }
}
