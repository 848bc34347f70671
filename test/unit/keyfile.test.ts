import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { KeyFileError, looksLikePassphrase, MAX_KEY_BYTES, readKeyFile } from "../../src/keyfile.js";

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "monopiped-keyfile-"));
});
after(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, content: Buffer | string): string {
  const p = join(dir, name);
  writeFileSync(p, content, { mode: 0o600 });
  return p;
}

const refused = (path: string, why: RegExp) =>
  assert.throws(
    () => readKeyFile(path),
    (e: unknown) => e instanceof KeyFileError && why.test(e.message) && e.message.includes(path),
  );

describe("key files", () => {
  it("reads a regular file of random bytes without warnings", () => {
    const bytes = randomBytes(32);
    const k = readKeyFile(write("good.bin", bytes));
    assert.ok(k.bytes.equals(bytes));
    assert.deepEqual(k.warnings, []);
  });

  it("refuses a named pipe at once instead of waiting on it forever", () => {
    const fifo = join(dir, "fifo");
    assert.equal(spawnSync("mkfifo", [fifo]).status, 0);
    refused(fifo, /is a named pipe \(FIFO\); a key file must be a regular file \(or - for standard input\)/);
  });

  it("refuses a device such as /dev/urandom (which would be read forever)", () => {
    refused("/dev/urandom", /is a character device; a key file must be a regular file/);
    refused("/dev/null", /is a character device/);
  });

  it("refuses a directory", () => {
    refused(dir, /is a directory/);
  });

  it(`refuses a file larger than ${MAX_KEY_BYTES} bytes (1 MiB), and takes one of exactly that size`, () => {
    refused(
      write("big.bin", randomBytes(MAX_KEY_BYTES + 1)),
      /has 1048577 bytes, more than the 1048576 \(1 MiB\)/,
    );
    assert.equal(readKeyFile(write("max.bin", randomBytes(MAX_KEY_BYTES))).bytes.length, MAX_KEY_BYTES);
  });

  it("warns about a passphrase but accepts it (spiped accepts any file)", () => {
    const p = write("phrase.txt", "correct horse battery staple, twice\n");
    const k = readKeyFile(p);
    assert.equal(k.bytes.length, 36);
    assert.equal(k.warnings.length, 1);
    assert.match(k.warnings[0], /key file .*phrase\.txt looks like a passphrase .*monopiped keygen/);
    const same = readKeyFile(write("aaa.txt", "a".repeat(40)));
    assert.match(same.warnings[0], /only 1 different characters/);
  });
});

describe("what looks like a passphrase", () => {
  it("flags typed text: words with spaces, or few different characters", () => {
    for (const text of [
      "correct horse battery staple, twice",
      "passwordpasswordpasswordpassword",
      "0".repeat(64),
      "abcabcabcabcabcabcabcabcabcabcabc\n",
    ])
      assert.ok(looksLikePassphrase(Buffer.from(text)), text);
  });
  it("does not flag random bytes, nor hex or base64 encodings of a random key", () => {
    for (let i = 0; i < 20; i++) {
      const key = randomBytes(32);
      assert.equal(looksLikePassphrase(key), undefined);
      assert.equal(looksLikePassphrase(Buffer.from(`${key.toString("hex")}\n`)), undefined);
      assert.equal(looksLikePassphrase(Buffer.from(`${key.toString("base64")}\n`)), undefined);
    }
    // openssl rand -base64 64 wraps its output at 64 characters
    const wrapped = randomBytes(64).toString("base64");
    assert.equal(
      looksLikePassphrase(Buffer.from(`${wrapped.slice(0, 64)}\n${wrapped.slice(64)}\n`)),
      undefined,
    );
  });
});
