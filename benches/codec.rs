//! Chunk protocol codec: header encode/decode, CRC32C throughput, and the incremental decoder.
//!
//! Run: `cargo bench --bench codec` (or `-- --quick` for a short run).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ustack::proto::{
    crc32c, crc32c_append, ChunkId, Event, Limits, Request, RequestDecoder, RequestHeader,
    ResponseHeader,
};

fn write_header(len: u32, crc: u32) -> RequestHeader {
    RequestHeader::new(
        0x0123_4567_89AB_CDEF,
        Request::Write {
            chunk_id: ChunkId(0xFEDC_BA98_7654_3210_0123_4567_89AB_CDEF),
            offset: 8 << 20,
            len,
            crc,
        },
    )
}

fn headers(c: &mut Criterion) {
    let limits = Limits::DEFAULT;
    let mut g = c.benchmark_group("header");
    g.throughput(Throughput::Elements(1));

    let req = write_header(4096, 0xDEAD_BEEF);
    let req_bytes = req.to_bytes();
    g.bench_function("request_emit", |b| {
        let mut buf = [0u8; RequestHeader::HEADER_LEN];
        b.iter(|| {
            black_box(&req).emit(&mut buf);
            black_box(&buf);
        })
    });
    g.bench_function("request_parse", |b| {
        b.iter(|| RequestHeader::parse(black_box(&req_bytes), &limits))
    });

    let resp = ResponseHeader::read(0x0123_4567_89AB_CDEF, 4096, 0xDEAD_BEEF, 64 << 20);
    let resp_bytes = resp.to_bytes();
    g.bench_function("response_emit", |b| {
        let mut buf = [0u8; ResponseHeader::HEADER_LEN];
        b.iter(|| {
            black_box(&resp).emit(&mut buf);
            black_box(&buf);
        })
    });
    g.bench_function("response_parse", |b| {
        b.iter(|| ResponseHeader::parse(black_box(&resp_bytes), &limits))
    });
    g.finish();
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for len in [4usize << 10, 1 << 20] {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::from_parameter(len), &data, |b, data| {
            b.iter(|| crc32c(black_box(data)))
        });
    }
    // The incremental form over 1460-byte pieces (one TCP segment each), as a receiver sees it.
    let data: Vec<u8> = (0..1usize << 20).map(|i| (i * 31 + 7) as u8).collect();
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("append_1460B_pieces/1048576", |b| {
        b.iter(|| black_box(&data).chunks(1460).fold(0, crc32c_append))
    });
    g.finish();
}

fn decoder(c: &mut Criterion) {
    let limits = Limits::DEFAULT;
    let mut g = c.benchmark_group("decoder");

    // 64 pipelined PINGs: per-frame overhead of the state machine.
    let stream: Vec<u8> = (0..64u64)
        .flat_map(|id| RequestHeader::new(id, Request::Ping).to_bytes())
        .collect();
    g.throughput(Throughput::Elements(64));
    g.bench_function("64_pings", |b| {
        b.iter(|| {
            let mut dec = RequestDecoder::new(limits);
            let mut input = black_box(&stream[..]);
            let mut frames = 0u32;
            loop {
                let (n, ev) = dec.feed(input);
                input = &input[n..];
                match ev {
                    None => break,
                    Some(Event::End(_)) => frames += 1,
                    Some(_) => {}
                }
            }
            frames
        })
    });

    // One 4 KiB WRITE frame fed in 1460-byte pieces: header parse + payload CRC on the way.
    let data = vec![0xA5u8; 4096];
    let mut frame = write_header(4096, crc32c(&data)).to_bytes().to_vec();
    frame.extend_from_slice(&data);
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("write_4KiB_in_1460B_pieces", |b| {
        b.iter(|| {
            let mut dec = RequestDecoder::new(limits);
            let mut ok = false;
            for piece in black_box(&frame).chunks(1460) {
                let mut input = piece;
                loop {
                    let (n, ev) = dec.feed(input);
                    input = &input[n..];
                    match ev {
                        None => break,
                        Some(Event::End(v)) => ok = v.is_ok(),
                        Some(_) => {}
                    }
                }
            }
            if let (_, Some(Event::End(v))) = dec.feed(&[]) {
                ok = v.is_ok();
            }
            ok
        })
    });
    g.finish();
}

criterion_group!(benches, headers, crc, decoder);
criterion_main!(benches);
