// Every figure of the book: a click opens the PNG at full size in a new tab, and an image without a
// meaningful alt text (Sphinx names copied outputs by a content hash) gets its figure caption, or the
// "Figure." paragraph after it, as alt text.
document.addEventListener("DOMContentLoaded", () => {
  const hashName = /^[0-9a-f]{32,}(\.png)?$/i;
  document.querySelectorAll(".bd-article img").forEach((img) => {
    const figure = img.closest("figure");
    let text = figure && figure.querySelector("figcaption") ? figure.querySelector("figcaption").innerText : "";
    if (!text) {
      const out = img.closest(".cell_output, .output");
      const next = out && out.nextElementSibling;
      text = next && /^Figure\b/.test(next.innerText) ? next.innerText : "";
    }
    const alt = (img.getAttribute("alt") || "").trim();
    if (text && (!alt || hashName.test(alt) || /^_images\//.test(alt))) {
      img.setAttribute("alt", text.replace(/\s+/g, " ").slice(0, 300));
    }
    if (!img.closest("a")) {
      const a = document.createElement("a");
      a.href = img.currentSrc || img.src;
      a.target = "_blank";
      a.rel = "noopener";
      a.title = "Open the figure at full size";
      img.parentNode.insertBefore(a, img);
      a.appendChild(img);
    }
  });
});
