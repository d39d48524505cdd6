//! `md2html`: renders Markdown to HTML.
//!
//! Input: UTF-8 Markdown (CommonMark with the GitHub extensions: tables,
//! strikethrough, task lists, footnotes). Output: the HTML fragment as UTF-8
//! text, exactly as pulldown-cmark renders it. Arguments: `safe` (switch):
//! raw HTML in the Markdown is escaped instead of passed through, for input
//! that comes from people you do not trust.

use pulldown_cmark::{html, Event, Options, Parser};
use voidbox_guest::{Args, Tool, ToolError, ToolInfo};

/// Renders `markdown` to HTML; with `safe`, raw HTML becomes text.
pub fn render(markdown: &str, safe: bool) -> String {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES;
    let events = Parser::new_ext(markdown, options).map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) if safe => Event::Text(raw),
        other => other,
    });
    let mut out = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut out, events);
    out
}

struct Md2Html;

impl Tool for Md2Html {
    type Input = String;
    type Output = String;

    fn describe() -> ToolInfo {
        voidbox_guest::tool_info!()
    }

    fn invoke(markdown: String, args: &Args) -> Result<String, ToolError> {
        args.reject_unknown(&["safe"])?;
        Ok(render(&markdown, args.flag("safe")?))
    }
}

voidbox_guest::export_tool!(Md2Html);

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn renders_commonmark_and_extensions() {
        assert_eq!(
            render("# Title\n\nSome *em* text.\n", false),
            "<h1>Title</h1>\n<p>Some <em>em</em> text.</p>\n"
        );
        let table = render("| a | b |\n|---|---|\n| 1 | 2 |\n", false);
        assert!(
            table.contains("<table>") && table.contains("<td>2</td>"),
            "{table}"
        );
        assert_eq!(render("~~gone~~", false), "<p><del>gone</del></p>\n");
        assert!(render("- [x] done\n", false).contains("checked"));
    }

    #[test]
    fn safe_mode_escapes_raw_html() {
        let input = "<script>alert(1)</script>\n";
        assert!(render(input, false).contains("<script>"));
        let safe = render(input, true);
        assert!(!safe.contains("<script>"), "{safe}");
        assert!(safe.contains("&lt;script&gt;"), "{safe}");
    }
}
