(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("images-data").textContent);
  var images = data.images, size = data.pageSize, page = 0, shown = images;
  var cards = document.getElementById("cards"), filter = document.getElementById("filter");
  var info = document.getElementById("page-info");
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }
  function img(src, alt, cls, w, h) {
    var node = el("img", cls);
    node.src = src; node.alt = alt; node.loading = "lazy"; node.decoding = "async";
    if (w && h) { node.width = w; node.height = h; }
    return node;
  }
  function card(item) {
    var box = el("div", "card " + item.s);
    box.appendChild(el("h3", "", item.n));
    var meta = item.w ? item.w + "x" + item.h + " px, " + item.s : item.s;
    box.appendChild(el("div", "meta", meta + (item.r ? " (resumed)" : "")));
    if (item.e) { box.appendChild(el("div", "error", item.e)); }
    if (item.t.length === 3) {
      var scale = Math.min(1, 160 / Math.max(item.w, item.h));
      var w = Math.max(1, Math.round(item.w * scale)), h = Math.max(1, Math.round(item.h * scale));
      var pair = el("div", "pair");
      pair.appendChild(img(item.t[0], "before: " + item.n, "before", w, h));
      pair.appendChild(img(item.t[1], "after: " + item.n, "after", w, h));
      box.appendChild(pair);
      box.appendChild(img(item.t[2], "cluster masks of " + item.n, "masks"));
    }
    var total = item.k.reduce(function (a, b) { return a + b; }, 0) || 1;
    var row = el("div", "swatches");
    item.c.forEach(function (colour, j) {
      var share = (100 * item.k[j] / total).toFixed(1) + "%";
      var sw = el("span", "swatch");
      sw.style.background = colour; sw.title = "cluster " + j + " " + colour + " " + share;
      var entry = el("span", "item");
      entry.appendChild(sw);
      entry.appendChild(el("span", "share", share));
      row.appendChild(entry);
    });
    box.appendChild(row);
    item.notes.forEach(function (note) { box.appendChild(el("div", "note", note)); });
    return box;
  }
  function pages() { return Math.max(1, Math.ceil(shown.length / size)); }
  function draw() {
    page = Math.min(Math.max(page, 0), pages() - 1);
    var frag = document.createDocumentFragment();
    shown.slice(page * size, (page + 1) * size).forEach(function (item) {
      frag.appendChild(card(item));
    });
    cards.replaceChildren(frag);
    info.textContent = "page " + (page + 1) + " of " + pages() + " (" + shown.length +
      " image(s))";
  }
  function apply() {
    var want = filter.value;
    shown = want === "all" ? images : images.filter(function (i) { return i.s === want; });
    page = 0; draw();
  }
  document.getElementById("prev").addEventListener("click", function () { page -= 1; draw(); });
  document.getElementById("next").addEventListener("click", function () { page += 1; draw(); });
  filter.addEventListener("change", apply);
  draw();
}());
