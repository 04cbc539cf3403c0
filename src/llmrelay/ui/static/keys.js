"use strict";
// Copies a new key's secret (shown once) to the clipboard.
(function () {
  const button = document.getElementById("copy-key");
  if (!button) return;
  button.addEventListener("click", async function () {
    const source = document.getElementById(button.dataset.copy);
    try {
      await navigator.clipboard.writeText(source.textContent);
      button.textContent = "Copied";
    } catch (err) {
      const range = document.createRange();
      range.selectNodeContents(source);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      button.textContent = "Press Ctrl+C";
    }
  });
})();
