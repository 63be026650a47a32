"""Reports and figures: what a tool or an investigation shows a person, with no plotting
dependency (figures are written as plain SVG text; see :mod:`selfscope.report.figures`)."""
