"""How completions are turned into HTML (app/rendering.py): Markdown and code read well, and nothing in
a completion can run code, fetch a URL or escape its box.

The oracle is Python's own ``html.parser``: each output is parsed into elements, and the tests look at
the tags, attributes and text a browser would get, never at another call of the code under test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

from app.rendering import (
    LABEL_CSS,
    MAX_HIGHLIGHT_CHARS,
    MAX_MARKDOWN_CHARS,
    render_markdown,
    render_prompt,
    render_response,
    sanitize,
)
from core.labeling.actions import ComparisonView, ResponseView
from core.segments import split_thinking

VOID_TAGS = {"br", "hr", "img", "input", "meta", "link", "wbr", "col", "area", "source"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str | None]
    children: list[Element | str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def iter(self):  # noqa: ANN201
        for child in self.children:
            if isinstance(child, Element):
                yield child
                yield from child.iter()

    def find_all(self, tag: str, css_class: str | None = None) -> list[Element]:
        return [e for e in self.iter() if e.tag == tag and (css_class is None or css_class in e.classes)]


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        element = Element(tag, dict(attrs))
        self.stack[-1].children.append(element)
        if tag not in VOID_TAGS:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):  # noqa: ANN001
        self.stack[-1].children.append(Element(tag, dict(attrs)))

    def handle_endtag(self, tag):  # noqa: ANN001
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data):  # noqa: ANN001
        self.stack[-1].children.append(data)


def parse(html_text: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(html_text)
    builder.close()
    return builder.root


def response(text: str) -> ResponseView:
    thinking, answer = split_thinking(text)
    return ResponseView(side="a", model=None, text=text, thinking=thinking, answer=answer)


def rendered_part(html_text: str) -> Element:
    """The rendered (non-raw) text of a response: its ``rl-md`` blocks."""
    blocks = parse(html_text).find_all("div", "rl-md")
    assert blocks
    return Element("root", {}, list(blocks))


PYTHON = '''def area(radius: float) -> float:
    """Area of a circle."""
    if radius < 0:
        raise ValueError("negative")
    return 3.14159 * radius ** 2
'''


def test_markdown_headings_lists_tables_and_emphasis_become_html_elements():
    tree = parse(render_markdown(
        "# Title\n\nSome **bold** and *italic* and ~~gone~~.\n\n- one\n- two\n\n1. first\n2. second\n\n"
        "| name | score |\n|:---|---:|\n| a | 1 |\n| b | 2 |\n\n> quoted\n"
    ))
    assert [h.text() for h in tree.find_all("h1")] == ["Title"]
    assert [e.text() for e in tree.find_all("strong")] == ["bold"]
    assert [e.text() for e in tree.find_all("em")] == ["italic"]
    assert [e.text() for e in tree.find_all("s")] == ["gone"]
    assert [li.text() for li in tree.find_all("ul")[0].find_all("li")] == ["one", "two"]
    assert [li.text() for li in tree.find_all("ol")[0].find_all("li")] == ["first", "second"]
    assert [th.text() for th in tree.find_all("th")] == ["name", "score"]
    assert [td.text() for td in tree.find_all("td")] == ["a", "1", "b", "2"]
    assert tree.find_all("td")[1].attrs["style"].replace(" ", "") == "text-align:right"
    assert tree.find_all("blockquote")[0].text().strip() == "quoted"


def test_fenced_python_code_keeps_its_indentation_and_gets_highlighting_spans_in_a_monospace_block():
    tree = parse(render_markdown(f"Here:\n\n```python\n{PYTHON}```\n"))
    [block] = tree.find_all("pre")
    assert "rl-code" in block.classes
    assert block.text() == PYTHON  # every space and newline as written
    token_spans = [span for span in block.find_all("span") if any(c.startswith("rl-tok-") for c in span.classes)]
    assert {span.text() for span in token_spans} >= {"def", "area", "return", "raise"}
    # The page's style sheet sets that class in a monospace font, with no wrapping.
    rule = re.search(r"pre\.rl-code\s*\{([^}]*)\}", LABEL_CSS).group(1)
    assert "monospace" in re.search(r"font-family:([^;]*)", rule).group(1)
    assert re.search(r"white-space:\s*pre\s*;", rule) and re.search(r"overflow-x:\s*auto", rule)


def test_indented_code_block_is_a_monospace_block_that_keeps_its_indentation():
    tree = parse(render_markdown("Text.\n\n    for x in range(3):\n        print(x)\n"))
    [block] = tree.find_all("pre")
    assert "rl-code" in block.classes
    assert block.text() == "for x in range(3):\n    print(x)\n"


def test_code_in_an_unknown_language_is_shown_as_plain_escaped_code():
    code = 'frobnicate <b>"x"</b> & more\n  indented\n'
    tree = parse(render_markdown(f"```no-such-language\n{code}```\n"))
    [block] = tree.find_all("pre")
    assert "rl-code" in block.classes and block.find_all("span") == [] and block.find_all("b") == []
    assert block.text() == code


def test_a_code_block_over_the_highlight_cap_is_shown_whole_without_highlighting():
    code = "x = 1  # filler\n" * (MAX_HIGHLIGHT_CHARS // 16 + 10)
    assert len(code) > MAX_HIGHLIGHT_CHARS
    tree = parse(render_markdown(f"```python\n{code}```\n"))
    [block] = tree.find_all("pre")
    assert block.find_all("span") == []
    assert block.text() == code


def test_code_is_highlighted_until_the_text_has_used_its_highlight_budget():
    line = "x = 1  # filler\n"
    first = line * (MAX_HIGHLIGHT_CHARS * 3 // 4 // len(line))  # fits
    second = line * (MAX_HIGHLIGHT_CHARS // 2 // len(line))  # fits alone, not after the first
    third = "y = 2\n"  # still fits in what is left
    quoted_second = "".join(f"> {line}\n" for line in second.splitlines())  # a fence inside a blockquote
    tree = parse(render_markdown(f"```python\n{first}```\n\n> ```python\n{quoted_second}> ```\n\n```python\n{third}```\n"))
    blocks = tree.find_all("pre")
    assert [block.text() for block in blocks] == [first, second, third]
    assert [bool(block.find_all("span")) for block in blocks] == [True, False, True]


def test_a_text_over_the_markdown_cap_is_shown_raw_and_whole():
    text = "**not bold** <b>x</b>\n" * (MAX_MARKDOWN_CHARS // 20)
    assert len(text) > MAX_MARKDOWN_CHARS
    tree = parse(render_markdown(text))
    assert tree.find_all("strong") == [] and tree.find_all("b") == []
    assert text in tree.text()


def test_a_remote_image_becomes_a_link_showing_its_text_and_url_and_no_img_is_emitted():
    url = "http://attacker.invalid/track.png"
    output = render_response(response(f"See ![a tracker]({url}) and ![]({url}?2)."), "Left")
    tree = parse(output)
    assert tree.find_all("img") == []
    links = rendered_part(output).find_all("a")
    assert [link.attrs["href"] for link in links] == [url, url + "?2"]
    assert "a tracker" in links[0].text() and url in links[0].text() and url + "?2" in links[1].text()
    for link in links:
        assert set(link.attrs["rel"].split()) >= {"noopener", "noreferrer", "nofollow"}


def test_links_keep_only_http_https_and_mailto_urls_and_get_a_safe_rel():
    source = ("[ok](https://example.com/a) [mail](mailto:someone@example.com) [js](javascript:alert(1)) "
              "[rel](/gradio_api/logout) [frag](#top) ![pixel](data:image/png;base64,iVBORw0KGgo=) "
              "<https://example.com/auto> [vb](vbscript:msgbox(1)) [file](file:///etc/passwd)")
    tree = parse(render_markdown(source))
    hrefs = [link.attrs.get("href") for link in tree.find_all("a")]
    assert [h for h in hrefs if h] == ["https://example.com/a", "mailto:someone@example.com", "https://example.com/auto"]
    for link in tree.find_all("a"):
        assert set(link.attrs["rel"].split()) >= {"noopener", "noreferrer", "nofollow"}
    assert "javascript:" not in " ".join(str(v) for e in tree.iter() for v in e.attrs.values())


def test_raw_html_in_markdown_is_shown_as_text_not_interpreted():
    source = ('<script>alert(1)</script>\n\n<img src="http://attacker.invalid/x.png" onerror="alert(2)">\n\n'
              '<style>body { display: none }</style> <iframe src="http://attacker.invalid/"></iframe> '
              '<a href="javascript:alert(3)">click</a> <div onclick="alert(4)" class="gradio-container">x</div>')
    output = render_response(response(source), "Left")
    tree = parse(output)
    tags = {element.tag for element in tree.iter()}
    assert not tags & {"script", "img", "style", "iframe", "svg", "object", "embed", "form", "input"}
    assert not [name for e in tree.iter() for name in e.attrs if name.startswith("on")]
    assert rendered_part(output).find_all("a") == []
    text = rendered_part(output).text()
    for shown in ("<script>alert(1)</script>", 'onerror="alert(2)"', "<style>", "<iframe", 'href="javascript:alert(3)"'):
        assert shown in text


def test_the_sanitizer_keeps_only_allow_listed_tags_attributes_classes_and_urls():
    # The second wall: whatever HTML reaches it (a parser bug, a future plugin) comes out inert.
    tree = parse(sanitize(
        '<script>alert(1)</script><img src="http://x.invalid/p.png"><iframe src="http://x.invalid"></iframe>'
        '<a href="javascript:alert(1)" onclick="alert(2)">js</a><a href="/logout">rel</a>'
        '<span class="gradio-container rl-tok-k" style="position:fixed">k</span>'
        '<p style="background:url(http://x.invalid)">p</p><form action="/x"><input name="q"></form>'
    ))
    assert {e.tag for e in tree.iter()} <= {"a", "span", "p"}
    assert [link.attrs.get("href") for link in tree.find_all("a")] == [None, None]
    [span] = tree.find_all("span")
    assert span.attrs == {"class": "rl-tok-k"}
    assert tree.find_all("p")[0].attrs == {}


def test_the_thinking_segment_and_the_prompt_render_as_markdown():
    output = render_response(response("<think>Step **one**, then:\n\n- a\n- b</think>The **answer**."), "Right")
    tree = parse(output)
    [details] = tree.find_all("details", "rl-thinking")
    assert [e.text() for e in details.find_all("strong")] == ["one"] and len(details.find_all("li")) == 2
    chat = ComparisonView(1, None, [{"role": "user", "content": "Is `x` **bold**?"}], response("a"), response("b"))
    prompt = parse(render_prompt(chat))
    assert [e.text() for e in prompt.find_all("strong")] == ["bold"] and prompt.find_all("code")[0].text() == "x"


def test_the_raw_view_holds_the_exact_stored_text():
    stored = ("<think>plan: **a** & <b>b</b>\n</think>\n\n## Answer\n\n  **two  spaces**\t<tab>\n"
              "```python\n    indented()\n```\n&amp; literal entity, trailing space \n")
    output = render_response(response(stored), "Left")
    [raw] = parse(output).find_all("div", "rl-raw")
    assert raw.children == [stored]  # one text node, no element parsed out of it
    prompt_text = "Q: <i>why</i> **now**?  \n"
    view = ComparisonView(1, prompt_text, None, response("a"), response("b"))
    [raw_prompt] = parse(render_prompt(view)).find_all("div", "rl-raw")
    assert raw_prompt.children == [prompt_text]
    # The raw block is monospace and keeps every space and line break.
    rule = re.search(r"\.rl-raw\s*\{([^}]*)\}", LABEL_CSS).group(1)
    assert "monospace" in rule and re.search(r"white-space:\s*pre-wrap", rule)
