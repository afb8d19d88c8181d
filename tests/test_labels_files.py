"""Labels files as people write them (the labels-file form of shared.data.sources): a byte-order
mark, CRLF line ends, quoted names with commas, extra columns, upper-case extensions, sub-folders;
each works, or fails with a message that names the line."""

from __future__ import annotations

import json

import pytest
from conftest import write_image

from shared import data


@pytest.fixture
def folder(tmp_path):
    """Six images: a.jpg, B.JPG, 'x, y.png', sub/c.jpg, sub/deep/d.png, e f.jpg."""
    root = tmp_path / "flat"
    for name in ("a.jpg", "B.JPG", "x, y.png", "sub/c.jpg", "sub/deep/d.png", "e f.jpg"):
        write_image(root / name)
    return root


ROWS = [("a.jpg", "cat"), ("B.JPG", "dog"), ("x, y.png", "cat"), ("sub/c.jpg", "dog"),
        ("sub/deep/d.png", "cat"), ("e f.jpg", "dog")]


def csv_text(rows=ROWS, header="filename,label", end="\n") -> str:
    lines = [header] + [f'"{n}",{lab}' if "," in n else f"{n},{lab}" for n, lab in rows]
    return end.join(lines) + end


def labelled(folder) -> dict[str, str]:
    ds = data.load(folder)
    assert ds.skipped.empty and ds.class_names == ["cat", "dog"]
    return dict(zip(ds.files["path"], ds.files["label"], strict=True))


def error(folder) -> str:
    with pytest.raises(ValueError) as info:
        data.load(folder)
    return str(info.value)


def test_byte_order_mark_csv_and_json(folder):
    (folder / "labels.csv").write_bytes(b"\xef\xbb\xbf" + csv_text().encode())
    assert labelled(folder) == dict(ROWS)
    (folder / "labels.csv").unlink()
    (folder / "labels.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(dict(ROWS)).encode())
    assert labelled(folder) == dict(ROWS)
    (folder / "labels.json").write_bytes(json.dumps(dict(ROWS)).encode("utf-16"))   # Notepad
    assert labelled(folder) == dict(ROWS)


def test_crlf_line_ends_and_blank_lines(folder):
    text = csv_text(end="\r\n").replace("a.jpg,cat\r\n", "a.jpg,cat\r\n\r\n  \r\n")
    (folder / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())     # Excel's CSV UTF-8
    assert labelled(folder) == dict(ROWS)


def test_quoted_names_with_commas(folder):
    (folder / "labels.csv").write_text(csv_text())
    assert labelled(folder)["x, y.png"] == "cat"
    unquoted = csv_text().replace('"x, y.png"', "x, y.png")
    (folder / "labels.csv").write_text(unquoted)
    assert error(folder) == ("labels file labels.csv line 4: 3 field(s) where the header has 2 "
                             "(filename,label): 'x,y.png,cat'; put a file name with a ',' in "
                             "double quotes")


def test_extra_columns_in_any_order_and_other_delimiters(folder):
    rows = "\n".join(f'{lab},"{n}",note {i},' for i, (n, lab) in enumerate(ROWS))
    (folder / "labels.csv").write_text("Label, FileName ,notes\n" + rows + "\n")
    assert labelled(folder) == dict(ROWS)              # a trailing empty field is no field
    (folder / "labels.csv").write_text(csv_text().replace(",", ";").replace('"x; y.png"',
                                                                            '"x, y.png"'))
    assert labelled(folder) == dict(ROWS)              # Excel in much of Europe
    (folder / "labels.csv").write_text("filename,label,notes\na.jpg\nB.JPG,dog\n")
    assert error(folder).startswith("labels file labels.csv line 2: 1 field(s) where the header "
                                    "has 3")


def test_upper_case_extensions_and_names_listed_in_another_case(folder):
    rows = [("A.JPG" if n == "a.jpg" else "b.jpg" if n == "B.JPG" else n, lab)
            for n, lab in ROWS]
    (folder / "labels.csv").write_text(csv_text(rows))
    assert labelled(folder) == dict(ROWS)              # the files' own names
    write_image(folder / "b.jpg")                      # now b.jpg and B.JPG: no guessing
    (folder / "labels.csv").write_text("filename,label\nA.JPG,cat\nb.Jpg,dog\n")
    assert error(folder).endswith("names 1 file(s) that are not images in "
                                  f"{folder}: 'b.Jpg' (line 3)")


def test_paths_with_sub_folders(folder):
    rows = [("./sub/c.jpg" if n == "sub/c.jpg" else "sub\\deep\\d.png" if n == "sub/deep/d.png"
             else n, lab) for n, lab in ROWS]
    (folder / "labels.csv").write_text(csv_text(rows))
    assert labelled(folder) == dict(ROWS)
    (folder / "labels.json").write_text(json.dumps(dict(rows)))
    assert data.load(folder / "labels.json").files["path"].tolist() == sorted(dict(ROWS))


def test_errors_name_the_line(folder):
    (folder / "labels.csv").write_text("filename,label\n\na.jpg,cat\nB.JPG,\n")
    assert "'B.JPG': '' (line 4)" in error(folder)
    (folder / "labels.csv").write_text("filename,label\na.jpg,cat\n\n./a.jpg,dog\n")
    assert "duplicate rows for 'a.jpg' (lines 2, 4)" in error(folder)
    (folder / "labels.csv").write_bytes("filename,label\na.jpg,cat\nB.JPG,chien\ncaf\xe9.jpg,"
                                        "cat\n".encode("latin-1"))
    assert error(folder) == ("labels file labels.csv line 4: not UTF-8 text (byte 0xe9); save "
                             "it as UTF-8 (Excel: 'CSV UTF-8')")
    (folder / "labels.csv").write_text("")
    assert "labels file labels.csv is empty" in error(folder)
