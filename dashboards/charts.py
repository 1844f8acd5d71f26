"""Altair charts for the dashboard: every chart has axis titles with units."""

from __future__ import annotations

import altair as alt
import pandas as pd

PROJECTION_ORDER = ["all", "PA", "AP", "LAT"]
GROUP_COLOURS = alt.Scale(domain=["head", "medium", "tail", "no result"],
                          range=["#1f77b4", "#ff7f0e", "#d62728", "#bbbbbb"])


def lines(df: pd.DataFrame, x: str, y: str, colour: str, x_title: str, y_title: str,
          rule: float | None = None, rule_label: str = "", dash: str | None = None) -> alt.LayerChart | alt.Chart:
    """One line per ``colour`` value; an optional dashed horizontal reference (e.g. the constant predictor)."""
    enc = {"x": alt.X(f"{x}:Q", title=x_title, axis=alt.Axis(tickMinStep=1)),
           "y": alt.Y(f"{y}:Q", title=y_title),
           "color": alt.Color(f"{colour}:N", title=colour.replace("_", " ")),
           "tooltip": [x, colour, alt.Tooltip(f"{y}:Q", format=".3f")]}
    if dash:
        enc["strokeDash"] = alt.StrokeDash(f"{dash}:N", title=dash.replace("_", " "))
    chart = alt.Chart(df).mark_line(point=True).encode(**enc)
    if rule is None:
        return chart
    ref = pd.DataFrame({"y": [rule], "label": [rule_label]})
    rule_chart = alt.Chart(ref).mark_rule(strokeDash=[6, 4], color="grey").encode(
        y=alt.Y("y:Q", title=y_title),
        tooltip=[alt.Tooltip("label:N", title="reference"), alt.Tooltip("y:Q", format=".3f")])
    return chart + rule_chart


def heatmap(df: pd.DataFrame, x: str, y: str, value: str, x_title: str, y_title: str, value_title: str,
            x_order: list[str] | None = None) -> alt.LayerChart:
    """A value matrix with the numbers written in the cells (blank cells: no data)."""
    base = alt.Chart(df).encode(
        x=alt.X(f"{x}:N", title=x_title, sort=x_order, axis=alt.Axis(labelAngle=0)),
        y=alt.Y(f"{y}:N", title=y_title),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", title=value_title, scale=alt.Scale(scheme="viridis", domain=[0, 1])),
        tooltip=[x, y, alt.Tooltip(f"{value}:Q", format=".3f")])
    text = base.mark_text(fontSize=12).encode(
        text=alt.Text(f"{value}:Q", format=".2f"),
        color=alt.condition(f"datum.{value} > 0.55", alt.value("black"), alt.value("white")))
    return cells + text


def class_bars(df: pd.DataFrame, metric_title: str) -> alt.LayerChart:
    """Per-class bars (sorted by training prevalence, coloured by head / medium / tail) with the training
    prevalence on a second, logarithmic axis."""
    order = df.sort_values("train_prevalence", ascending=False)["class_name"].tolist()
    x = alt.X("class_name:N", sort=order, title="class (sorted by training prevalence)",
              axis=alt.Axis(labelAngle=-60, labelLimit=180, labelOverlap=False))
    bars = alt.Chart(df).mark_bar().encode(
        x=x, y=alt.Y("value:Q", title=metric_title, scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("band:N", title="band", scale=GROUP_COLOURS),
        tooltip=["class_name", "band", alt.Tooltip("value:Q", format=".3f"),
                 alt.Tooltip("train_prevalence:Q", format=".4f", title="training prevalence"),
                 alt.Tooltip("n:Q", title="test positives")])
    prev = alt.Chart(df).mark_line(point=True, color="black").encode(
        x=x, y=alt.Y("train_prevalence:Q", title="training prevalence (log)",
                     scale=alt.Scale(type="log")))
    return alt.layer(bars, prev).resolve_scale(y="independent").properties(height=380)


def bars(df: pd.DataFrame, x: str, y: str, x_title: str, y_title: str, colour: str | None = None) -> alt.Chart:
    enc = {"x": alt.X(f"{x}:N", title=x_title), "y": alt.Y(f"{y}:Q", title=y_title),
           "tooltip": [x, alt.Tooltip(f"{y}:Q", format=".3g")]}
    if colour:
        enc["color"] = alt.Color(f"{colour}:N", title=colour.replace("_", " "))
        enc["xOffset"] = f"{colour}:N"
    return alt.Chart(df).mark_bar().encode(**enc)


def stacked(df: pd.DataFrame, x: str, y: str, colour: str, x_title: str, y_title: str,
            order: list[str] | None = None) -> alt.Chart:
    """Bars of ``y`` per ``x`` split into ``colour`` parts (e.g. a round's seconds by phase), in ``order``."""
    return alt.Chart(df).mark_bar().encode(
        x=alt.X(f"{x}:O", title=x_title), y=alt.Y(f"sum({y}):Q", title=y_title, stack="zero"),
        color=alt.Color(f"{colour}:N", title=colour.replace("_", " "), sort=order),
        order=alt.Order("order:Q"), tooltip=[x, colour, alt.Tooltip(f"{y}:Q", format=".2f")])
