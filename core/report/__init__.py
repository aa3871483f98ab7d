"""Reports: what people look at. The hunt report and the atlas page (PNG, HTML, CSV) rendered from results."""
