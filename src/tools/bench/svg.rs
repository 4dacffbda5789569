//! Just enough SVG for the report: panels of polylines with axes, ticks and
//! a legend. Written by hand so the bench needs no plotting crate.

use std::fmt::Write;

pub const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Logarithmic y axis (latencies span decades).
    pub y_log: bool,
    /// Ticks to use instead of evenly spaced numbers (value, label).
    pub x_ticks: Option<Vec<(f64, String)>>,
}

/// Margins inside a panel's box, for tick labels and titles.
const LEFT: f64 = 60.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;
/// Smallest y drawn on a log axis (ms).
const LOG_FLOOR: f64 = 0.01;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Evenly spaced "nice" ticks covering `lo..=hi`.
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= 6.0).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-6 {
        out.push(t);
        t += step;
    }
    out
}

fn label(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 1.0 && v.fract() == 0.0) {
        format!("{v:.0}")
    } else if v.abs() >= 0.1 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws `p` in the box at (`x`, `y`) of size `w` × `h`.
pub fn panel(out: &mut String, x: f64, y: f64, w: f64, h: f64, p: &Panel) {
    let pts = p.series.iter().flat_map(|s| s.points.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (px, py) in pts {
        x0 = x0.min(px);
        x1 = x1.max(px);
        y0 = y0.min(py);
        y1 = y1.max(py);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let ty = |v: f64| if p.y_log { v.max(LOG_FLOOR).log10() } else { v };
    let (ylo, yhi) = if p.y_log {
        (ty(y0).floor(), ty(y1).ceil().max(ty(y0).floor() + 1.0))
    } else {
        (0.0, if y1 > 0.0 { y1 * 1.1 } else { 1.0 })
    };
    let (pw, ph) = (w - LEFT - RIGHT, h - TOP - BOTTOM);
    let sx = |v: f64| x + LEFT + (v - x0) / (x1 - x0) * pw;
    let sy = |v: f64| y + TOP + ph - (ty(v) - ylo) / (yhi - ylo) * ph;

    let _ = writeln!(
        out,
        r##"<g font-family="sans-serif" font-size="11"><rect x="{x}" y="{y}" width="{w}" height="{h}" fill="#fff" stroke="#ddd"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
        x + LEFT,
        y + 18.0,
        escape(&p.title)
    );
    // Axes and grid.
    let y_ticks: Vec<f64> =
        if p.y_log { (ylo as i32..=yhi as i32).map(|e| 10f64.powi(e)).collect() } else { nice_ticks(ylo, yhi) };
    for t in y_ticks {
        let yy = sy(t);
        let _ = writeln!(
            out,
            r##"<line x1="{}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            x + LEFT,
            x + LEFT + pw,
            x + LEFT - 4.0,
            yy + 4.0,
            label(t)
        );
    }
    let x_ticks = p.x_ticks.clone().unwrap_or_else(|| nice_ticks(x0, x1).into_iter().map(|t| (t, label(t))).collect());
    for (t, l) in x_ticks.iter().filter(|(t, _)| *t >= x0 - 1e-9 && *t <= x1 + 1e-9) {
        let xx = sx(*t);
        let _ = writeln!(
            out,
            r##"<line x1="{xx:.1}" y1="{}" x2="{xx:.1}" y2="{}" stroke="#eee"/><text x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"##,
            y + TOP,
            y + TOP + ph,
            y + TOP + ph + 14.0,
            escape(l)
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{}" y="{}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##,
        x + LEFT,
        y + TOP
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        x + LEFT + pw / 2.0,
        y + h - 6.0,
        escape(&p.x_label)
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"#,
        x + 14.0,
        y + TOP + ph / 2.0,
        x + 14.0,
        y + TOP + ph / 2.0,
        escape(&p.y_label)
    );
    // Data, then the legend on top of it.
    for s in &p.series {
        let points: Vec<String> = s.points.iter().map(|&(a, b)| format!("{:.1},{:.1}", sx(a), sy(b))).collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.6" points="{}"/>"#,
            s.color,
            points.join(" ")
        );
    }
    for (i, s) in p.series.iter().enumerate() {
        let (lx, ly) = (x + LEFT + 8.0, y + TOP + 14.0 + 14.0 * i as f64);
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="3"/><text x="{}" y="{ly}">{}</text>"#,
            ly - 4.0,
            lx + 16.0,
            ly - 4.0,
            s.color,
            lx + 20.0,
            escape(&s.name)
        );
    }
    let _ = writeln!(out, "</g>");
}

/// A whole document of `rows` × `cols` equal panels (row-major; a `None`
/// leaves its cell empty), with a title line on top.
pub fn document(title: &str, subtitle: &str, cols: usize, panels: &[Option<Panel>]) -> String {
    let (pw, ph) = (600.0, 280.0);
    let rows = panels.len().div_ceil(cols.max(1));
    let (w, h) = (pw * cols as f64, 50.0 + ph * rows as f64);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}"><rect width="{w}" height="{h}" fill="#fafafa"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="10" y="22" font-family="sans-serif" font-size="16" font-weight="bold">{}</text><text x="10" y="40" font-family="sans-serif" font-size="11">{}</text>"#,
        escape(title),
        escape(subtitle)
    );
    for (i, p) in panels.iter().enumerate() {
        if let Some(p) = p {
            let (r, c) = (i / cols, i % cols);
            panel(&mut out, c as f64 * pw, 50.0 + r as f64 * ph, pw, ph, p);
        }
    }
    out.push_str("</svg>\n");
    out
}
