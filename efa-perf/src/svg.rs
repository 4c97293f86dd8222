//! A small SVG line-chart writer: message size (log2 axis) against a measured figure.
//!
//! Hand-written rather than a plotting crate so the tool needs no font libraries: text is emitted as SVG
//! `<text>` and laid out by the viewer.

use std::fmt::Write as _;

/// One line of the chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (message size in bytes, value) pairs; sizes must be positive.
    pub points: Vec<(f64, f64)>,
}

/// A chart of series against message size.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// Label of the vertical axis.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

const W: f64 = 900.0;
const H: f64 = 540.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Escapes text for XML content and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// Human size label: 2, 64, 1K, 64K, 8M.
pub fn size_label(bytes: f64) -> String {
    let b = bytes.round() as u64;
    if b >= 1 << 30 && b % (1 << 30) == 0 {
        format!("{}G", b >> 30)
    } else if b >= 1 << 20 && b % (1 << 20) == 0 {
        format!("{}M", b >> 20)
    } else if b >= 1 << 10 && b % (1 << 10) == 0 {
        format!("{}K", b >> 10)
    } else {
        format!("{b}")
    }
}

/// A round step for about `target` ticks over [0, max].
fn nice_step(max: f64, target: f64) -> f64 {
    let raw = max / target;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_value(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The plot area and the scales of a chart: log2 of the size on x, the value on y.
struct Frame {
    xmin: f64,
    xmax: f64,
    ytop: f64,
    step: f64,
    pw: f64,
    ph: f64,
}

impl Frame {
    /// Fits the scales to every finite point of `chart` with a positive size.
    fn fit(chart: &Chart) -> Frame {
        let (mut xmin, mut xmax, mut ymax) = (f64::MAX, f64::MIN, 0.0f64);
        for &(x, y) in chart
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| *x > 0.0 && y.is_finite())
        {
            xmin = xmin.min(x.log2());
            xmax = xmax.max(x.log2());
            ymax = ymax.max(y);
        }
        if xmin > xmax {
            (xmin, xmax) = (1.0, 23.0);
        }
        if xmax - xmin < 1.0 {
            xmin -= 0.5;
            xmax += 0.5;
        }
        if ymax <= 0.0 {
            ymax = 1.0;
        }
        let step = nice_step(ymax, 6.0);
        Frame {
            xmin,
            xmax,
            ytop: (ymax / step).ceil() * step,
            step,
            pw: W - LEFT - RIGHT,
            ph: H - TOP - BOTTOM,
        }
    }

    fn px(&self, x: f64) -> f64 {
        LEFT + (x.log2() - self.xmin) / (self.xmax - self.xmin) * self.pw
    }

    fn py(&self, y: f64) -> f64 {
        TOP + self.ph - y / self.ytop * self.ph
    }

    /// Grid lines and labels of the y axis, one per step.
    fn y_axis(&self, s: &mut String) {
        let _ = writeln!(s, r##"<g class="y-axis" stroke="#ddd">"##);
        let mut v = 0.0;
        while v <= self.ytop * 1.0001 {
            let y = self.py(v);
            let _ = writeln!(
                s,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/>"#,
                LEFT + self.pw
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" stroke="none" fill="black">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                fmt_value(v)
            );
            v += self.step;
        }
        let _ = writeln!(s, "</g>");
    }

    /// Grid lines and labels of the x axis at each power of two (thinned to at most ~12).
    fn x_axis(&self, s: &mut String) {
        let (lo, hi) = (self.xmin.ceil() as i32, self.xmax.floor() as i32);
        let every = (((hi - lo) / 12) + 1).max(1);
        let _ = writeln!(s, r##"<g class="x-axis" stroke="#ddd">"##);
        for e in (lo..=hi).step_by(every as usize) {
            let x = self.px(2f64.powi(e));
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}"/>"#,
                TOP + self.ph
            );
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" stroke="none" fill="black">{}</text>"#,
                TOP + self.ph + 18.0,
                size_label(2f64.powi(e))
            );
        }
        let _ = writeln!(s, "</g>");
    }

    /// The plot's border and the axis titles.
    fn border_and_titles(&self, s: &mut String, y_label: &str) {
        let (pw, ph) = (self.pw, self.ph);
        let _ = writeln!(
            s,
            r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">message size [bytes]</text>"#,
            LEFT + pw / 2.0,
            H - 20.0
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(22 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + ph / 2.0,
            escape(y_label)
        );
    }

    /// Series `i`: its line, a dot per point and its legend entry.
    fn series(&self, s: &mut String, i: usize, series: &Series) {
        let color = COLORS[i % COLORS.len()];
        let mut pts: Vec<(f64, f64)> = series
            .points
            .iter()
            .copied()
            .filter(|(x, y)| *x > 0.0 && y.is_finite())
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let _ = writeln!(
            s,
            r#"<g class="series" data-name="{}">"#,
            escape(&series.name)
        );
        let _ = writeln!(s, "<title>{}</title>", escape(&series.name));
        let line: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", self.px(x), self.py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            line.join(" ")
        );
        for &(x, y) in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"><title>{}: {}</title></circle>"#,
                self.px(x),
                self.py(y),
                size_label(x),
                fmt_value(y)
            );
        }
        let _ = writeln!(s, "</g>");
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let lx = LEFT + self.pw + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/>"#,
            lx + 20.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            lx + 26.0,
            ly + 4.0,
            escape(&series.name)
        );
    }
}

impl Chart {
    /// Renders the chart as a standalone SVG document.
    pub fn to_svg(&self) -> String {
        let frame = Frame::fit(self);
        let mut s = String::new();
        let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, "<title>{}</title>", escape(&self.title));
        let _ = writeln!(
            s,
            r#"<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
            LEFT + frame.pw / 2.0,
            escape(&self.title)
        );
        frame.y_axis(&mut s);
        frame.x_axis(&mut s);
        frame.border_and_titles(&mut s, &self.y_label);
        for (i, series) in self.series.iter().enumerate() {
            frame.series(&mut s, i, series);
        }
        let _ = writeln!(s, "</svg>");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_xml_with_one_group_per_series() {
        let chart = Chart {
            title: "a <b> & c".into(),
            y_label: "BW [MB/sec]".into(),
            series: vec![
                Series {
                    name: "sim".into(),
                    points: vec![(2.0, 1.0), (1024.0, 50.0), (65536.0, 900.0)],
                },
                Series {
                    name: "tcp".into(),
                    points: vec![(2.0, 0.5), (1024.0, 20.0), (65536.0, f64::NAN)],
                },
            ],
        };
        let text = chart.to_svg();
        let doc = roxmltree::Document::parse(&text).expect("valid XML");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let groups: Vec<_> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("series"))
            .collect();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].attribute("data-name"), Some("sim"));
        let circles =
            |g: &roxmltree::Node| g.children().filter(|n| n.has_tag_name("circle")).count();
        assert_eq!(circles(&groups[0]), 3);
        assert_eq!(circles(&groups[1]), 2, "NaN point is dropped");
        assert!(text.contains("a &lt;b&gt; &amp; c"));
    }

    #[test]
    fn empty_and_single_point_charts_render() {
        let empty = Chart {
            title: "t".into(),
            y_label: "y".into(),
            series: vec![],
        }
        .to_svg();
        roxmltree::Document::parse(&empty).unwrap();
        let one = Chart {
            title: "t".into(),
            y_label: "y".into(),
            series: vec![Series {
                name: "s".into(),
                points: vec![(4096.0, 0.0)],
            }],
        }
        .to_svg();
        roxmltree::Document::parse(&one).unwrap();
        assert!(!one.contains("NaN") && !one.contains("inf"));
    }

    #[test]
    fn labels() {
        assert_eq!(size_label(2.0), "2");
        assert_eq!(size_label(65536.0), "64K");
        assert_eq!(size_label(8388608.0), "8M");
        assert_eq!(size_label(1536.0), "1536");
    }
}
