"""Audit of the hand-written text files gpua reads: class-name files and prompt-template files.

Each test is one way a file written by hand, or exported from a spreadsheet or an editor on
Windows, macOS or Linux, used to give a silently wrong result or a traceback.
"""

from __future__ import annotations

import json

import pytest

from gpua import GPUAError
from gpua.data.classnames import load_class_prompts, load_classnames, parse_class_entries
from gpua.data.prompts import fill_template, get_templates


def _write(path, data):
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


# ------------------------------------------------------------------------------ encodings
def test_utf16_files_with_a_byte_order_mark_are_read(tmp_path):
    """Windows Notepad's "Unicode" and Excel's "Unicode Text" save UTF-16 with a BOM."""
    for enc in ("utf-16", "utf-16-be", "utf-32"):
        bom = {"utf-16": b"", "utf-16-be": b"\xfe\xff", "utf-32": b""}[enc]
        f = _write(tmp_path / f"c_{enc}.txt", bom + "caf\u00e9\r\nautomobile: car, automobile\r\n".encode(enc))
        assert load_class_prompts(f) == (["caf\u00e9", "automobile"], [["caf\u00e9"], ["car", "automobile"]])
    j = _write(tmp_path / "c16.json", json.dumps({"automobile": ["car"], "cat": ["cat"]}).encode("utf-16"))
    assert load_class_prompts(j) == (["automobile", "cat"], [["car"], ["cat"]])
    t = _write(tmp_path / "t16.txt", "a photo of a {}.\r\nart of the {}.\r\n".encode("utf-16"))
    assert get_templates(t) == ["a photo of a {}.", "art of the {}."]


def test_utf16_without_a_byte_order_mark_is_refused_not_read_as_nul_names(tmp_path):
    """Was read as the names 'c\\x00a\\x00t\\x00'... (one line: silently; several: a 'duplicate '\\x00'' error)."""
    f = _write(tmp_path / "c.txt", "cat\n".encode("utf-16-le"))
    with pytest.raises(GPUAError, match=r"c\.txt.*NUL.*line 1.*UTF-8"):
        load_classnames(f)
    with pytest.raises(GPUAError, match=r"NUL.*UTF-8"):
        get_templates(_write(tmp_path / "t.txt", "a photo of a {}.\n".encode("utf-16-le")))


def test_latin1_file_error_names_the_line_and_the_fix(tmp_path):
    f = _write(tmp_path / "c.txt", "cat\ndog\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(GPUAError, match=r"c\.txt.*line 3.*[Ss]ave it as UTF-8"):
        load_classnames(f)


def test_byte_order_marks_and_zero_width_spaces_inside_the_file_are_dropped(tmp_path):
    """Two Windows-saved files concatenated (`type a.txt b.txt > classes.txt`) put a BOM before a line."""
    f = _write(tmp_path / "c.txt", "\ufeffcat\r\n\ufeffdog\r\nbird\u200b\r\n")
    assert load_classnames(f) == ["cat", "dog", "bird"]
    t = _write(tmp_path / "t.txt", "\ufeffa photo of a {}.\n\ufeff{} in the wild.\n")
    assert get_templates(t) == ["a photo of a {}.", "{} in the wild."]


# ------------------------------------------------------------------- names that collide
@pytest.mark.parametrize("lines", [
    "Cat\ndog\ncat\n",                         # case: CLIP's tokenizer lower-cases, same prompt
    "american_bulldog\namerican bulldog\n",    # '_' is written as a space in the prompt
    "caf\u00e9\ncafe\u0301\n",                 # NFC and NFD: the loaders match folders in NFC
    "sea  lion\nsea lion\n",
])
def test_class_names_that_give_the_same_prompt_are_refused(tmp_path, lines):
    f = _write(tmp_path / "c.txt", lines)
    with pytest.raises(GPUAError, match=r"c\.txt.*line \d.*line \d"):
        load_classnames(f)


def test_prompt_words_differing_only_in_case_are_one_word(tmp_path):
    f = _write(tmp_path / "c.txt", "feline: Cat, kitty\npet: cat, dog\n")
    with pytest.raises(GPUAError, match=r"'Cat'.*'cat'.*one class only"):
        load_class_prompts(f)


# ----------------------------------------------------------------- ':' and ',' in names
@pytest.mark.parametrize("line", ["12:00 clock", "http://example.org/cat", "clock: 12:00, noon: midday"])
def test_a_colon_inside_a_name_is_refused_not_split(tmp_path, line):
    """'12:00 clock' was the class '12' prompted as '00 clock'."""
    f = _write(tmp_path / "c.txt", f"dog\n{line}\n")
    with pytest.raises(GPUAError, match=r"c\.txt.*line 2.*':'.*JSON"):
        load_class_prompts(f)


def test_json_objects_keep_colons_and_commas_in_names_and_words(tmp_path):
    """The JSON object form is structural: it was re-written as 'name: w1, w2' lines and split again."""
    f = _write(tmp_path / "c.json", json.dumps({"12:00 clock": ["clock showing 12:00"], "pub": ["fish, chips"],
                                                "dog": "dog"}))
    assert load_class_prompts(f) == (["12:00 clock", "pub", "dog"], [["clock showing 12:00"], ["fish, chips"], ["dog"]])


# -------------------------------------------------------------------- quotes and tabs
def test_quotes_from_python_lists_and_csv_exports_are_not_part_of_names(tmp_path):
    f = _write(tmp_path / "c.txt", "'airplane',\n\"automobile\",\n\"cat, kitten\"\ntruck,\"lorry, truck\"\n")
    assert load_class_prompts(f) == (["airplane", "automobile", "cat", "truck"],
                                     [["airplane"], ["automobile"], ["cat", "kitten"], ["truck", "lorry"]])
    assert parse_class_entries(["rock 'n' roll", "o'clock"])[0] == ["rock 'n' roll", "o'clock"]


def test_a_tab_inside_a_class_name_is_refused(tmp_path):
    """A two-column spreadsheet saved as tab-separated text gave the class 'automobile\\tcar'."""
    f = _write(tmp_path / "c.txt", "cat\nautomobile\tcar\n")
    with pytest.raises(GPUAError, match=r"c\.txt.*line 2.*tab"):
        load_classnames(f)
    # trailing empty columns are white space at the end of the line, as before
    assert load_classnames(_write(tmp_path / "d.txt", "cat\t\t\ndog\t\n")) == ["cat", "dog"]


def test_json_list_entries_are_not_comments(tmp_path):
    """JSON has no comments: '#1 record' and 'Chanel #5' were dropped or cut to 'Chanel'."""
    f = _write(tmp_path / "c.json", json.dumps(["#1 record", "Chanel #5", "cat"]))
    assert load_classnames(f) == ["#1 record", "Chanel #5", "cat"]


# ------------------------------------------------------------------------ bad files
def test_deeply_nested_json_is_a_clear_error(tmp_path):
    """Was a RecursionError traceback."""
    f = _write(tmp_path / "c.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(GPUAError, match=r"c\.json.*nested"):
        load_classnames(f)
    with pytest.raises(GPUAError, match=r"t\.json.*nested"):
        get_templates(_write(tmp_path / "t.json", "[" * 100_000 + "]" * 100_000))
    d = _write(tmp_path / "d.json", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(GPUAError, match=r"d\.json.*nested"):
        load_classnames(d)


def test_class_name_errors_give_the_line_number(tmp_path):
    f = _write(tmp_path / "c.txt", "# my classes\n\ncat\ndog\n\n: kitten\n")
    with pytest.raises(GPUAError, match=r"c\.txt.*line 6.*no class name"):
        load_classnames(f)
    g = _write(tmp_path / "g.txt", "# my classes\n\ncat\ndog\n\ncat\n")
    with pytest.raises(GPUAError, match=r"duplicate name 'cat'.*line 3.*line 6"):
        load_classnames(g)


# ------------------------------------------------------------------------ templates
def test_template_files_skip_comment_lines(tmp_path):
    """The class-name format skips '#' lines; a template file said '# my templates' had no placeholder."""
    t = _write(tmp_path / "t.txt", "# my templates\na photo of a {}.\n\n# hashtags are templates:\n#{} of the day\n")
    assert get_templates(t) == ["a photo of a {}.", "#{} of the day"]
    with pytest.raises(GPUAError, match=r"t2\.txt.*only comments"):
        get_templates(_write(tmp_path / "t2.txt", "# nothing yet\n"))


def test_template_errors_give_the_line_number(tmp_path):
    t = _write(tmp_path / "t.txt", "# mine\n\na photo of a {}.\na photo of something.\n")
    with pytest.raises(GPUAError, match=r"t\.txt.*line 4.*'a photo of something\.' has no class-name placeholder"):
        get_templates(t)


def test_template_literal_braces_follow_str_format(tmp_path):
    """'{{' and '}}' are str.format's literal braces; '{{fancy}}' was refused as the placeholder '{fancy}'."""
    t = _write(tmp_path / "t.txt", "a {{fancy}} photo of a {c}.\n")
    temps = get_templates(t)
    assert [fill_template(x, "cat") for x in temps] == ["a {fancy} photo of a cat."]
    assert fill_template("a {} in {braces}", "x") == "a x in {braces}"  # unchanged
    assert fill_template("{}", "set_{a}", underscores_to_spaces=False) == "set_{a}"  # the name is never parsed
    with pytest.raises(GPUAError, match="no class-name placeholder"):
        get_templates(["a photo of a {{}}."])  # literal '{}', no placeholder


def test_printf_placeholder_gets_a_hint():
    with pytest.raises(GPUAError, match=r"'%s' is printf style; write \{\}"):
        get_templates(["a photo of a %s."])


def test_templates_copied_from_python_source(tmp_path):
    """CLIP's notebook lists templates as "'a bad photo of a {}.'," lines; the quotes and comma went into every prompt."""
    t = _write(tmp_path / "t.txt", "'a bad photo of a {}.',\n\"a photo of many {}.\",\n'{} in the wild.'\n")
    assert get_templates(t) == ["a bad photo of a {}.", "a photo of many {}.", "{} in the wild."]
    lam = _write(tmp_path / "lam.txt", "lambda c: f'a bad photo of a {c}.',\n")
    with pytest.raises(GPUAError, match=r"lam\.txt.*line 1.*Python"):
        get_templates(lam)


def test_a_class_word_repeated_in_another_spelling_counts_once(tmp_path):
    """'cat, Cat, feline' weighted the one prompt 'cat' twice in the class's average."""
    f = _write(tmp_path / "c.txt", "cat: cat, Cat, cat, feline, caf\u00e9, cafe\u0301\ndog\n")
    assert load_class_prompts(f)[1] == [["cat", "feline", "caf\u00e9"], ["dog"]]
    j = _write(tmp_path / "c.json", json.dumps({"automobile": "car, automobile", "cat": ["cat"]}))
    assert load_class_prompts(j) == (["automobile", "cat"], [["car", "automobile"], ["cat"]])


def test_match_classes_ignores_the_unicode_form():
    """A model whose class file was typed (NFC) against test features named from macOS folders (NFD):
    refused as 'named differently', listing 'café' on both sides."""
    from gpua.data.classnames import match_classes

    m = match_classes(["caf\u00e9", "dog"], ["dog", "cafe\u0301"])
    assert m.by_name and list(m.index) == [1, 0]
